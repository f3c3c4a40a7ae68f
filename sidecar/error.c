/*
 * error.c - names of the error codes and the ms_error_t helper.
 */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
    int code;
    const char *name;
} error_names[] = {
    {MS_EINVAL, "invalid_request"},
    {MS_ETOOLARGE, "too_large"},
    {MS_EUNKNOWNOP, "unknown_op"},
    {MS_ECONFLICT, "conflict"},
    {MS_EUNAVAIL, "unavailable"},
    {MS_ETIMEOUT, "timeout"},
    {MS_EINTERNAL, "internal"},
    {MS_ENOMEM, "internal"},
    {MS_EIO, "io"},
    {MS_EPROTO, "protocol"},
};

#define N_NAMES (sizeof(error_names) / sizeof(error_names[0]))

const char *ms_error_name(int code)
{
    for (size_t i = 0; i < N_NAMES; i++) {
        if (error_names[i].code == code)
            return error_names[i].name;
    }
    return "internal";
}


int ms_error_from_name(const char *name, size_t len)
{
    for (size_t i = 0; i < N_NAMES; i++) {
        const char *n = error_names[i].name;

        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return error_names[i].code;
    }
    return MS_EINTERNAL;
}


int ms_error_set(ms_error_t *err, int code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}
