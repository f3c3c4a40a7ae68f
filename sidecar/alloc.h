/*
 * alloc.h - the daemon's allocation wrappers.
 *
 * The daemon treats out-of-memory as fatal: these wrappers log once and
 * abort instead of returning NULL, so callers need no NULL checks. The
 * client library never uses them (it must return errors instead).
 */
#ifndef MS_ALLOC_H
#define MS_ALLOC_H

#include <stddef.h>

void *ms_malloc(size_t size);
void *ms_calloc(size_t n, size_t size);
void *ms_realloc(void *ptr, size_t size);
char *ms_strndup(const char *s, size_t len);

/* Called by code that got NULL from a library allocator (Jansson, ...). */
void ms_oom(void) __attribute__((noreturn));

#endif
