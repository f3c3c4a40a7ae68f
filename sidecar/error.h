/*
 * error.h - error codes shared by the daemon, the client library and the
 * wire protocol.
 *
 * Fallible functions return 0 or one of the negative MS_E* codes below.
 * Where a caller needs to tell a user what went wrong, the function also
 * fills an ms_error_t with the code and a one-line message. Each code maps
 * to one of the protocol's error strings (schema/PROTOCOL.md).
 */
#ifndef MS_ERROR_H
#define MS_ERROR_H

#include <stddef.h>

#define MS_MUST_CHECK __attribute__((warn_unused_result))

enum {
    MS_OK = 0,
    MS_EINVAL = -1,     /* invalid_request: malformed or mistyped request */
    MS_ETOOLARGE = -2,  /* too_large: a size, length or depth limit */
    MS_EUNKNOWNOP = -3, /* unknown_op: op not known to this daemon */
    MS_ECONFLICT = -4,  /* conflict: compare-and-set retries exhausted */
    MS_EUNAVAIL = -5,   /* unavailable: Redis cannot be reached */
    MS_ETIMEOUT = -6,   /* timeout */
    MS_EINTERNAL = -7,  /* internal: a bug or a local resource failure */
    MS_ENOMEM = -8,     /* internal: out of memory (client library only) */
    MS_EIO = -9,        /* io: socket error or closed (client library) */
    MS_EPROTO = -10     /* protocol: the peer broke the wire protocol */
};

#define MS_ERRMSG_MAX 200

typedef struct ms_error_s {
    int code;                /* one of MS_E*, MS_OK when no error */
    char msg[MS_ERRMSG_MAX]; /* NUL-terminated, never holds values */
} ms_error_t;

/* The protocol string for a code: "invalid_request", "too_large", ... */
const char *ms_error_name(int code);

/* The code for a protocol string, MS_EINTERNAL when unknown. */
int ms_error_from_name(const char *name, size_t len);

/*
 * Records code and a printf-style message in err (which may be NULL) and
 * returns code, so that callers can write: return ms_error_set(err, ...);
 */
int ms_error_set(ms_error_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
