/*
 * log.h - the daemon's log: one line per event on stderr, as
 *   ts=2026-12-04T15:56:26.123Z level=info msg="redis connected" link=cmd
 * The macros check the level before formatting anything. Callers pass
 * further key=value fields in the format; metadata values and secrets are
 * never logged.
 */
#ifndef MS_LOG_H
#define MS_LOG_H

#include <stddef.h>

typedef enum {
    MS_LOG_ERROR = 0,
    MS_LOG_WARN,
    MS_LOG_INFO,
    MS_LOG_DEBUG
} ms_log_level_t;

extern ms_log_level_t ms_log_level;

/* Parses "error", "warn", "info" or "debug": 0, or -1 if unknown. */
int ms_log_parse_level(const char *s, ms_log_level_t *out);

/*
 * Writes one line: msg is quoted, fields (a printf format, may be NULL)
 * follow as they are.
 */
void ms_log_write(ms_log_level_t level, const char *msg, const char *fields,
                  ...) __attribute__((format(printf, 3, 4)));

/*
 * Copies s[0..len) into out for a log field: printable ASCII stays, a
 * quote, a backslash and other bytes become \xNN, and a long text is cut
 * with "...". out always ends with NUL. Returns out.
 */
char *ms_log_escape(const char *s, size_t len, char *out, size_t size);

#define ms_log(level, msg, ...)                                                \
    do {                                                                       \
        if ((level) <= ms_log_level)                                           \
            ms_log_write((level), (msg), __VA_ARGS__);                         \
    } while (0)

#define ms_log_error(msg, ...) ms_log(MS_LOG_ERROR, msg, __VA_ARGS__)
#define ms_log_warn(msg, ...)  ms_log(MS_LOG_WARN, msg, __VA_ARGS__)
#define ms_log_info(msg, ...)  ms_log(MS_LOG_INFO, msg, __VA_ARGS__)
#define ms_log_debug(msg, ...) ms_log(MS_LOG_DEBUG, msg, __VA_ARGS__)

#endif
