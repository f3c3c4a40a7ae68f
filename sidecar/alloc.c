/*
 * alloc.c - allocation wrappers that abort on out-of-memory (daemon only).
 */
#include "alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ms_oom(void)
{
    /* No allocation here: stdio on stderr is unbuffered. */
    fputs("level=error msg=\"out of memory\"\n", stderr);
    abort();
}


void *ms_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);

    if (p == NULL)
        ms_oom();
    return p;
}


void *ms_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (p == NULL)
        ms_oom();
    return p;
}


void *ms_realloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);

    if (p == NULL)
        ms_oom();
    return p;
}


char *ms_strndup(const char *s, size_t len)
{
    char *p = ms_malloc(len + 1);

    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}
