/*
 * value.h - the value model: Jansson trees converted to and from msgpack
 * and JSON text, under size and depth limits.
 *
 * A value is a JSON-compatible tree: null, boolean, 64-bit signed integer,
 * double, UTF-8 string, array, or object with string keys. Msgpack input
 * that has no exact JSON form is refused, never stored lossily: binary,
 * ext, non-string or duplicate map keys, keys holding NUL, invalid UTF-8,
 * integers above INT64_MAX, NaN and infinities.
 *
 * Depth counts containers: a scalar has depth 0, {"a":1} depth 1,
 * {"a":[1]} depth 2.
 *
 * Used by the daemon and by the client library; pure functions with no
 * global state, safe on any thread. Never aborts: allocation failure is
 * reported as MS_ENOMEM.
 */
#ifndef MS_VALUE_H
#define MS_VALUE_H

#include <jansson.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/*
 * msgpack-c's unpacker holds at most 32 open containers, and a request map
 * takes one of them, so no value may nest deeper than this.
 */
#define MS_VALUE_DEPTH_CAP 31

typedef struct ms_value_limits_s {
    size_t max_bytes; /* largest encoded JSON text, in bytes */
    int max_depth;    /* deepest nesting, at most MS_VALUE_DEPTH_CAP */
} ms_value_limits_t;

#define MS_VALUE_DEFAULT_MAX_BYTES (64 * 1024)
#define MS_VALUE_DEFAULT_MAX_DEPTH MS_VALUE_DEPTH_CAP

/*
 * Converts a decoded msgpack object into a new Jansson value, checking
 * types and depth (not the encoded size: see ms_value_dump). On success
 * *out holds a new reference the caller releases with json_decref().
 * On failure returns MS_EINVAL (a type JSON cannot hold), MS_ETOOLARGE
 * (too deep) or MS_ENOMEM, with a message in err naming the offending
 * path, e.g. "value.a[3]: binary data has no JSON form".
 */
int ms_value_from_msgpack(const msgpack_object *obj,
                          const ms_value_limits_t *lim, json_t **out,
                          ms_error_t *err) MS_MUST_CHECK;

/* Appends the msgpack encoding of v to pk. Returns 0 or MS_ENOMEM. */
int ms_value_pack(const json_t *v, msgpack_packer *pk) MS_MUST_CHECK;

/*
 * Parses JSON text (as held in Redis) into a new Jansson value, checking
 * depth and size. An integer too large for 64 bits makes the whole text
 * parse with reals instead, as JavaScript would read it. Returns 0,
 * MS_EINVAL (not JSON, or NaN-like input), MS_ETOOLARGE or MS_ENOMEM.
 */
int ms_value_parse(const char *text, size_t len, const ms_value_limits_t *lim,
                   json_t **out, ms_error_t *err) MS_MUST_CHECK;

/*
 * Encodes v as compact JSON text with object keys in insertion order and
 * doubles that read back exactly. Fails with MS_ETOOLARGE when the text
 * would exceed lim->max_bytes (lim may be NULL for no limit). On success
 * *text is NUL-terminated, the caller frees it with free(), and *len
 * (optional) is its length.
 */
int ms_value_dump(const json_t *v, const ms_value_limits_t *lim, char **text,
                  size_t *len, ms_error_t *err) MS_MUST_CHECK;

/*
 * Converts JSON text straight to a msgpack buffer (parse + pack), and
 * back. The caller frees *out with free(). The daemon uses the first for
 * every value it caches (the cache keeps both forms).
 */
int ms_value_json_to_msgpack(const char *text, size_t len,
                             const ms_value_limits_t *lim, char **out,
                             size_t *out_len, ms_error_t *err) MS_MUST_CHECK;
int ms_value_msgpack_to_json(const char *buf, size_t len,
                             const ms_value_limits_t *lim, char **out,
                             size_t *out_len, ms_error_t *err) MS_MUST_CHECK;

/*
 * True when s[0..len) is strict UTF-8: no overlong forms, no surrogates,
 * nothing past U+10FFFF (NUL is allowed).
 */
bool ms_utf8_valid(const char *s, size_t len);

/* The length of the strict UTF-8 character s starts with; 0 if none. */
size_t ms_utf8_char(const char *s, size_t len);

#endif
