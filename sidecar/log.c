/*
 * log.c - formats log lines (see log.h). Each line is assembled in a
 * buffer and written with one write(2) so lines from one process never
 * interleave.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

ms_log_level_t ms_log_level = MS_LOG_INFO;

static const char *level_names[] = {"error", "warn", "info", "debug"};

int ms_log_parse_level(const char *s, ms_log_level_t *out)
{
    for (int i = 0; i <= MS_LOG_DEBUG; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (ms_log_level_t)i;
            return 0;
        }
    }
    return -1;
}


void ms_log_write(ms_log_level_t level, const char *msg, const char *fields,
                  ...)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int k;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
    k = snprintf(line + n, sizeof(line) - n, ".%03ldZ level=%s msg=\"%s\"",
                 ts.tv_nsec / 1000000, level_names[level], msg);
    n += k > 0 ? (size_t)k : 0;

    if (fields != NULL && n < sizeof(line) - 2) {
        va_list ap;

        line[n++] = ' ';
        va_start(ap, fields);
        k = vsnprintf(line + n, sizeof(line) - n, fields, ap);
        va_end(ap);
        n += k > 0 ? (size_t)k : 0;
    }

    /* A truncated line still ends with a newline. */
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, n) < 0) {
        /* Nowhere left to report a failing stderr. */
    }
}


char *ms_log_escape(const char *s, size_t len, char *out, size_t size)
{
    size_t n = 0;

    for (size_t i = 0; i < len && n + 8 < size; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[n++] = (char)c;
        else
            n += (size_t)snprintf(out + n, size - n, "\\x%02x", c);
        if (i + 1 < len && n + 8 >= size) {
            memcpy(out + n, "...", 3);
            n += 3;
        }
    }
    out[n] = '\0';
    return out;
}
