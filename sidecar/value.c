/*
 * value.c - the value model: msgpack objects and JSON text converted to and
 * from Jansson trees, refusing anything that has no exact JSON form.
 *
 * Entry points: ms_value_from_msgpack, ms_value_pack, ms_value_parse,
 * ms_value_dump and the two round trips ms_value_json_to_msgpack and
 * ms_value_msgpack_to_json. Linked into the daemon and the client library:
 * no global state, any thread, never aborts or logs.
 */
#include "value.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

/* Error paths stay well inside MS_ERRMSG_MAX, whatever the keys hold. */
#define PATH_MAX_LEN 112
#define STEP_MAX_LEN 40
#define KEY_SHOWN    24

typedef struct path_step_s {
    const char *key; /* NULL for an array element */
    size_t key_len;
    uint32_t index;
} path_step_t;

typedef struct conv_s {
    int max_depth;
    int depth;     /* containers open above the object being converted */
    size_t budget; /* JSON bytes left before the size limit (lower bound) */
    path_step_t steps[MS_VALUE_DEPTH_CAP];
    ms_error_t *err;
} conv_t;

typedef struct dump_buf_s {
    char *buf;
    size_t len;
    size_t cap;
    size_t max;
    int rc;
} dump_buf_t;

static int conv_value(conv_t *c, const msgpack_object *o, json_t **out);

static int limit_depth(const ms_value_limits_t *lim)
{
    if (lim == NULL || lim->max_depth > MS_VALUE_DEPTH_CAP)
        return MS_VALUE_DEPTH_CAP;
    return lim->max_depth < 0 ? 0 : lim->max_depth;
}


static size_t limit_bytes(const ms_value_limits_t *lim)
{
    return lim == NULL ? SIZE_MAX : lim->max_bytes;
}


size_t ms_utf8_char(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    unsigned c = len > 0 ? p[0] : 0;
    size_t n;
    uint32_t cp, min;

    if (len == 0)
        return 0;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 1, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 2, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len <= n)
        return 0;
    for (size_t i = 1; i <= n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n + 1;
}


bool ms_utf8_valid(const char *s, size_t len)
{
    while (len > 0) {
        size_t n = (unsigned char)*s < 0x80 ? 1 : ms_utf8_char(s, len);

        if (n == 0)
            return false;
        s += n;
        len -= n;
    }
    return true;
}


static bool key_is_plain(const char *key, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)key[i];

        if (ch <= 0x20 || ch >= 0x7f || strchr(".[]\"\\", ch) != NULL)
            return false;
    }
    return true;
}


/*
 * Keys come from the peer: anything but plain ASCII is escaped, so the
 * message stays printable, valid UTF-8 and short.
 */
static void key_format(const char *key, size_t len, char *buf, size_t size)
{
    bool plain = key_is_plain(key, len);
    size_t n = 0;

    n += snprintf(buf + n, size - n, plain ? "." : "[\"");
    for (size_t i = 0; i < len && n < KEY_SHOWN; i++) {
        unsigned char ch = (unsigned char)key[i];

        if (ch == '"' || ch == '\\')
            n += snprintf(buf + n, size - n, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            n += snprintf(buf + n, size - n, "\\x%02x", ch);
        else
            n += snprintf(buf + n, size - n, "%c", ch);
        if (i + 1 < len && n >= KEY_SHOWN)
            n += snprintf(buf + n, size - n, "...");
    }
    if (!plain)
        snprintf(buf + n, size - n, "\"]");
}


static void step_format(const path_step_t *s, char *buf, size_t size)
{
    if (s->key == NULL)
        snprintf(buf, size, "[%" PRIu32 "]", s->index);
    else
        key_format(s->key, s->key_len, buf, size);
}


/* Keeps the innermost steps, which say most about what went wrong. */
static void path_format(const conv_t *c, int nsteps, char *out, size_t size)
{
    char tail[PATH_MAX_LEN];
    size_t start = sizeof(tail) - 1;
    bool cut = false;

    tail[start] = '\0';
    for (int i = nsteps - 1; i >= 0; i--) {
        char step[STEP_MAX_LEN];
        size_t n;

        step_format(&c->steps[i], step, sizeof(step));
        n = strlen(step);
        if (n > start) {
            cut = true;
            break;
        }
        start -= n;
        memcpy(tail + start, step, n);
    }
    snprintf(out, size, "value%s%s", cut ? "..." : "", tail + start);
}


static int conv_fail_at(const conv_t *c, int nsteps, int code, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

static int conv_fail_at(const conv_t *c, int nsteps, int code, const char *fmt,
                        ...)
{
    char path[PATH_MAX_LEN + 8];
    char reason[80];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    path_format(c, nsteps, path, sizeof(path));
    return ms_error_set(c->err, code, "%s: %s", path, reason);
}


static int conv_fail(const conv_t *c, int code, const char *reason)
{
    return conv_fail_at(c, c->depth, code, "%s", reason);
}


static int conv_new(const conv_t *c, json_t *v, json_t **out)
{
    if (v == NULL)
        return conv_fail(c, MS_ENOMEM, "out of memory");
    *out = v;
    return 0;
}


static int conv_real(const conv_t *c, double d, json_t **out)
{
    if (!isfinite(d))
        return conv_fail(c, MS_EINVAL, "NaN and infinities have no JSON form");
    return conv_new(c, json_real(d), out);
}


static int conv_str(const conv_t *c, const msgpack_object_str *s, json_t **out)
{
    /* An empty str may come with a NULL pointer, which Jansson refuses. */
    const char *p = s->size > 0 ? s->ptr : "";

    if (!ms_utf8_valid(p, s->size))
        return conv_fail(c, MS_EINVAL, "string is not valid UTF-8");
    return conv_new(c, json_stringn_nocheck(p, s->size), out);
}


static int conv_array(conv_t *c, const msgpack_object_array *a, json_t **out)
{
    json_t *arr = json_array();
    int rc;

    if (arr == NULL)
        return conv_fail(c, MS_ENOMEM, "out of memory");

    for (uint32_t i = 0; i < a->size; i++) {
        json_t *item;

        c->steps[c->depth - 1] = (path_step_t){NULL, 0, i};
        rc = conv_value(c, &a->ptr[i], &item);
        if (rc < 0)
            goto failed_item;
        if (json_array_append_new(arr, item) < 0) {
            rc = conv_fail(c, MS_ENOMEM, "out of memory");
            goto failed_item;
        }
    }
    *out = arr;
    return 0;

failed_item:
    json_decref(arr);
    return rc;
}


/* Checks a key; the error names the map, since the key itself is bad. */
static int conv_key(const conv_t *c, uint32_t i, const msgpack_object *key)
{
    const char *p;

    if (key->type != MSGPACK_OBJECT_STR)
        return conv_fail_at(c, c->depth - 1, MS_EINVAL,
                            "map key #%" PRIu32 " is not a string", i);

    p = key->via.str.size > 0 ? key->via.str.ptr : "";
    if (!ms_utf8_valid(p, key->via.str.size))
        return conv_fail_at(c, c->depth - 1, MS_EINVAL,
                            "map key #%" PRIu32 " is not valid UTF-8", i);
    if (memchr(p, '\0', key->via.str.size) != NULL)
        return conv_fail_at(c, c->depth - 1, MS_EINVAL,
                            "map key #%" PRIu32 " holds NUL", i);
    return 0;
}


static int conv_member(conv_t *c, json_t *obj, uint32_t i,
                       const msgpack_object_kv *kv)
{
    const char *key;
    size_t key_len;
    json_t *item;
    int rc;

    rc = conv_key(c, i, &kv->key);
    if (rc < 0)
        return rc;

    key = kv->key.via.str.size > 0 ? kv->key.via.str.ptr : "";
    key_len = kv->key.via.str.size;
    c->steps[c->depth - 1] = (path_step_t){key, key_len, i};
    if (json_object_getn(obj, key, key_len) != NULL)
        return conv_fail(c, MS_EINVAL, "duplicate map key");

    rc = conv_value(c, &kv->val, &item);
    if (rc < 0)
        return rc;
    if (json_object_setn_new_nocheck(obj, key, key_len, item) < 0)
        return conv_fail(c, MS_ENOMEM, "out of memory");
    return 0;
}


static int conv_map(conv_t *c, const msgpack_object_map *m, json_t **out)
{
    json_t *obj = json_object();

    if (obj == NULL)
        return conv_fail(c, MS_ENOMEM, "out of memory");

    for (uint32_t i = 0; i < m->size; i++) {
        int rc = conv_member(c, obj, i, &m->ptr[i]);

        if (rc < 0) {
            json_decref(obj);
            return rc;
        }
    }
    *out = obj;
    return 0;
}


static int conv_container(conv_t *c, const msgpack_object *o, json_t **out)
{
    int rc;

    if (c->depth >= c->max_depth)
        return conv_fail_at(c, c->depth, MS_ETOOLARGE,
                            "nested deeper than %d levels", c->max_depth);

    c->depth++;
    if (o->type == MSGPACK_OBJECT_ARRAY)
        rc = conv_array(c, &o->via.array, out);
    else
        rc = conv_map(c, &o->via.map, out);
    c->depth--;
    return rc;
}


static int conv_value(conv_t *c, const msgpack_object *o, json_t **out)
{
    /*
     * Every value takes at least a byte of JSON, a string its length and
     * two quotes: a value that cannot fit the size limit is refused before
     * a million empty arrays are built only to be dumped and refused.
     */
    size_t cost = o->type == MSGPACK_OBJECT_STR ? o->via.str.size + 2 : 1;

    if (cost > c->budget)
        return conv_fail(c, MS_ETOOLARGE, "value is too large as JSON");
    c->budget -= cost;

    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return conv_new(c, json_null(), out);
    case MSGPACK_OBJECT_BOOLEAN:
        return conv_new(c, json_boolean(o->via.boolean), out);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > INT64_MAX)
            return conv_fail(c, MS_EINVAL, "integer is above 2^63-1");
        return conv_new(c, json_integer((json_int_t)o->via.u64), out);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return conv_new(c, json_integer(o->via.i64), out);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return conv_real(c, o->via.f64, out);
    case MSGPACK_OBJECT_STR:
        return conv_str(c, &o->via.str, out);
    case MSGPACK_OBJECT_ARRAY:
    case MSGPACK_OBJECT_MAP:
        return conv_container(c, o, out);
    case MSGPACK_OBJECT_BIN:
        return conv_fail(c, MS_EINVAL, "binary data has no JSON form");
    case MSGPACK_OBJECT_EXT:
        return conv_fail(c, MS_EINVAL, "extension types have no JSON form");
    }
    return conv_fail(c, MS_EINVAL, "unknown msgpack type");
}


int ms_value_from_msgpack(const msgpack_object *obj,
                          const ms_value_limits_t *lim, json_t **out,
                          ms_error_t *err)
{
    conv_t c = {.max_depth = limit_depth(lim),
                .depth = 0,
                .budget = limit_bytes(lim),
                .err = err};

    *out = NULL;
    return conv_value(&c, obj, out);
}


static int pack_str(msgpack_packer *pk, const char *s, size_t len)
{
    if (msgpack_pack_str(pk, len) != 0)
        return MS_ENOMEM;
    if (msgpack_pack_str_body(pk, s, len) != 0)
        return MS_ENOMEM;
    return 0;
}


static int pack_array(const json_t *v, msgpack_packer *pk)
{
    size_t n = json_array_size(v);

    if (msgpack_pack_array(pk, n) != 0)
        return MS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int rc = ms_value_pack(json_array_get(v, i), pk);

        if (rc < 0)
            return rc;
    }
    return 0;
}


static int pack_object(const json_t *v, msgpack_packer *pk)
{
    /* Jansson's iterators take a non-const object but do not modify it. */
    json_t *obj = (json_t *)v;
    void *it;

    if (msgpack_pack_map(pk, json_object_size(obj)) != 0)
        return MS_ENOMEM;
    for (it = json_object_iter(obj); it != NULL;
         it = json_object_iter_next(obj, it)) {
        int rc = pack_str(pk, json_object_iter_key(it),
                          json_object_iter_key_len(it));

        if (rc == 0)
            rc = ms_value_pack(json_object_iter_value(it), pk);
        if (rc < 0)
            return rc;
    }
    return 0;
}


int ms_value_pack(const json_t *v, msgpack_packer *pk)
{
    int rc = 0;

    assert(v != NULL);
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return pack_object(v, pk);
    case JSON_ARRAY:
        return pack_array(v, pk);
    case JSON_STRING:
        return pack_str(pk, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        rc = msgpack_pack_int64(pk, json_integer_value(v));
        break;
    case JSON_REAL:
        rc = msgpack_pack_double(pk, json_real_value(v));
        break;
    case JSON_TRUE:
        rc = msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        rc = msgpack_pack_false(pk);
        break;
    case JSON_NULL:
        rc = msgpack_pack_nil(pk);
        break;
    }
    return rc == 0 ? 0 : MS_ENOMEM;
}


/* True when v nests at most room more containers. */
static bool depth_within(const json_t *v, int room)
{
    json_t *obj = (json_t *)v;

    if (json_is_array(v)) {
        if (room == 0)
            return false;
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (!depth_within(json_array_get(v, i), room - 1))
                return false;
        }
    } else if (json_is_object(v)) {
        if (room == 0)
            return false;
        for (void *it = json_object_iter(obj); it != NULL;
             it = json_object_iter_next(obj, it)) {
            if (!depth_within(json_object_iter_value(it), room - 1))
                return false;
        }
    }
    return true;
}


static int parse_fail(const json_error_t *jerr, ms_error_t *err)
{
    /* jerr->text quotes the input, which may hold secrets: not copied. */
    switch (json_error_code(jerr)) {
    case json_error_out_of_memory:
        return ms_error_set(err, MS_ENOMEM, "value: out of memory");
    case json_error_stack_overflow:
        return ms_error_set(err, MS_ETOOLARGE, "value: JSON nests too deep");
    case json_error_numeric_overflow:
        return ms_error_set(err, MS_EINVAL,
                            "value: number out of range at line %d, "
                            "column %d",
                            jerr->line, jerr->column);
    default:
        return ms_error_set(err, MS_EINVAL,
                            "value: not valid JSON at line %d, column %d",
                            jerr->line, jerr->column);
    }
}


int ms_value_parse(const char *text, size_t len, const ms_value_limits_t *lim,
                   json_t **out, ms_error_t *err)
{
    const size_t flags = JSON_DECODE_ANY | JSON_ALLOW_NUL;
    int max_depth = limit_depth(lim);
    json_error_t jerr;
    json_t *v;

    *out = NULL;
    if (len > limit_bytes(lim))
        return ms_error_set(err, MS_ETOOLARGE,
                            "value: JSON text of %zu bytes exceeds the "
                            "limit of %zu",
                            len, limit_bytes(lim));

    v = json_loadb(text, len, flags, &jerr);
    /* JavaScript reads such a text with doubles only; so do we. */
    if (v == NULL && json_error_code(&jerr) == json_error_numeric_overflow)
        v = json_loadb(text, len, flags | JSON_DECODE_INT_AS_REAL, &jerr);
    if (v == NULL)
        return parse_fail(&jerr, err);

    if (!depth_within(v, max_depth)) {
        json_decref(v);
        return ms_error_set(err, MS_ETOOLARGE,
                            "value: nested deeper than %d levels", max_depth);
    }
    *out = v;
    return 0;
}


/* Collects Jansson's output, giving up as soon as it passes the limit. */
static int dump_cb(const char *chunk, size_t size, void *data)
{
    dump_buf_t *d = data;

    if (size > d->max - d->len) {
        d->rc = MS_ETOOLARGE;
        return -1;
    }
    if (size + 1 > d->cap - d->len) {
        size_t need = d->len + size + 1;
        size_t cap = d->cap > 0 ? d->cap : 256;
        char *p;

        while (cap < need && cap <= SIZE_MAX / 2)
            cap *= 2;
        if (cap < need)
            cap = need;
        p = realloc(d->buf, cap);
        if (p == NULL) {
            d->rc = MS_ENOMEM;
            return -1;
        }
        d->buf = p;
        d->cap = cap;
    }
    memcpy(d->buf + d->len, chunk, size);
    d->len += size;
    return 0;
}


/* 17 significant digits read back as the same double. */
#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17))

static int emit(dump_buf_t *d, const char *s, size_t n)
{
    return n > 0 ? dump_cb(s, n, d) : 0;
}


/* A string as Jansson writes it: the same escapes, UTF-8 as it is. */
static int emit_string(dump_buf_t *d, const char *s, size_t n)
{
    size_t run = 0;

    if (!ms_utf8_valid(s, n))
        return -1;
    if (emit(d, "\"", 1) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc;
        char u[8];

        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        switch (ch) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            snprintf(u, sizeof(u), "\\u%04X", ch);
            esc = u;
        }
        if (emit(d, s + run, i - run) < 0 || emit(d, esc, strlen(esc)) < 0)
            return -1;
        run = i + 1;
    }
    if (emit(d, s + run, n - run) < 0)
        return -1;
    return emit(d, "\"", 1);
}


static int emit_integer(dump_buf_t *d, json_int_t n)
{
    char digits[24];
    int k = (int)sizeof(digits);
    uint64_t u = n < 0 ? (uint64_t)0 - (uint64_t)n : (uint64_t)n;

    do {
        digits[--k] = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0);
    if (n < 0)
        digits[--k] = '-';
    return emit(d, digits + k, sizeof(digits) - (size_t)k);
}


/*
 * Writes v as Jansson's json_dump_callback would with DUMP_FLAGS, byte
 * for byte (a unit test holds the two together), without its per-object
 * bookkeeping: for a write's value that was most of a write's cost.
 * Reals are left to Jansson, for its exact formatting.
 */
static int emit_value(dump_buf_t *d, const json_t *v)
{
    const char *sep = "";

    switch (json_typeof(v)) {
    case JSON_OBJECT:
        if (emit(d, "{", 1) < 0)
            return -1;
        for (void *it = json_object_iter((json_t *)v); it != NULL;
             it = json_object_iter_next((json_t *)v, it)) {
            if (emit(d, sep, strlen(sep)) < 0 ||
                emit_string(d, json_object_iter_key(it),
                            json_object_iter_key_len(it)) < 0 ||
                emit(d, ":", 1) < 0 ||
                emit_value(d, json_object_iter_value(it)) < 0)
                return -1;
            sep = ",";
        }
        return emit(d, "}", 1);
    case JSON_ARRAY:
        if (emit(d, "[", 1) < 0)
            return -1;
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (emit(d, sep, strlen(sep)) < 0 ||
                emit_value(d, json_array_get(v, i)) < 0)
                return -1;
            sep = ",";
        }
        return emit(d, "]", 1);
    case JSON_STRING:
        return emit_string(d, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        return emit_integer(d, json_integer_value(v));
    case JSON_REAL:
        return json_dump_callback(v, dump_cb, d, DUMP_FLAGS);
    case JSON_TRUE:
        return emit(d, "true", 4);
    case JSON_FALSE:
        return emit(d, "false", 5);
    case JSON_NULL:
        return emit(d, "null", 4);
    }
    return -1;
}


int ms_value_dump(const json_t *v, const ms_value_limits_t *lim, char **text,
                  size_t *len, ms_error_t *err)
{
    dump_buf_t d = {.max = limit_bytes(lim), .rc = MS_EINVAL};

    *text = NULL;
    if (emit_value(&d, v) != 0)
        goto failed_dump;
    if (d.buf == NULL && dump_cb("", 0, &d) != 0)
        goto failed_dump;

    d.buf[d.len] = '\0';
    *text = d.buf;
    if (len != NULL)
        *len = d.len;
    return 0;

failed_dump:
    free(d.buf);
    if (d.rc == MS_ETOOLARGE)
        return ms_error_set(err, MS_ETOOLARGE,
                            "value: JSON text exceeds the limit of %zu bytes",
                            d.max);
    if (d.rc == MS_ENOMEM)
        return ms_error_set(err, MS_ENOMEM, "value: out of memory");
    return ms_error_set(err, MS_EINVAL, "value: has no JSON form");
}


int ms_value_json_to_msgpack(const char *text, size_t len,
                             const ms_value_limits_t *lim, char **out,
                             size_t *out_len, ms_error_t *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    json_t *v;
    int rc;

    *out = NULL;
    rc = ms_value_parse(text, len, lim, &v, err);
    if (rc < 0)
        return rc;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rc = ms_value_pack(v, &pk);
    json_decref(v);
    if (rc < 0) {
        msgpack_sbuffer_destroy(&sb);
        return ms_error_set(err, rc, "value: out of memory");
    }

    if (out_len != NULL)
        *out_len = sb.size;
    *out = msgpack_sbuffer_release(&sb);
    return 0;
}


int ms_value_msgpack_to_json(const char *buf, size_t len,
                             const ms_value_limits_t *lim, char **out,
                             size_t *out_len, ms_error_t *err)
{
    msgpack_unpacked up;
    size_t off = 0;
    json_t *v = NULL;
    int rc;

    *out = NULL;
    /* msgpack-c trusts declared counts: check the bytes before it sees them. */
    rc = ms_msgpack_check(buf, len, limit_depth(lim), err);
    if (rc < 0)
        return rc;

    msgpack_unpacked_init(&up);
    switch (msgpack_unpack_next(&up, buf, len, &off)) {
    case MSGPACK_UNPACK_SUCCESS:
        rc = ms_value_from_msgpack(&up.data, lim, &v, err);
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        rc = ms_error_set(err, MS_ENOMEM, "value: out of memory");
        break;
    default:
        rc = ms_error_set(err, MS_EINVAL, "value: not one msgpack object");
        break;
    }
    msgpack_unpacked_destroy(&up);
    if (rc < 0)
        return rc;

    rc = ms_value_dump(v, lim, out, out_len, err);
    json_decref(v);
    return rc;
}
