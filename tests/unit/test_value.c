/*
 * test_value.c - the value model: msgpack bytes, Jansson trees and JSON
 * text converted into one another. Refused types, depth and size limits
 * at and past their edges, exact integers and doubles, NUL in strings,
 * key order, and the paths named in error messages.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "value.h"

/* A byte string literal and its length, NUL bytes included. */
#define B(s) s, sizeof(s) - 1

static const ms_value_limits_t defaults = {MS_VALUE_DEFAULT_MAX_BYTES,
                                           MS_VALUE_DEFAULT_MAX_DEPTH};

typedef struct bytes_s {
    char *data;
    size_t len;
} bytes_t;

/* Unpacks raw bytes with msgpack-c and converts the object. */
static int from_bytes(const char *buf, size_t len, const ms_value_limits_t *lim,
                      json_t **out, ms_error_t *err)
{
    msgpack_unpacked up;
    size_t off = 0;
    int rc;

    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, buf, len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, len);
    rc = ms_value_from_msgpack(&up.data, lim, out, err);
    msgpack_unpacked_destroy(&up);
    return rc;
}


static bytes_t pack(const json_t *v)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    bytes_t b;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    assert_int_equal(ms_value_pack(v, &pk), 0);
    b.len = sb.size;
    b.data = msgpack_sbuffer_release(&sb);
    return b;
}


static char *dump(const json_t *v)
{
    ms_error_t err = {0};
    char *text = NULL;
    size_t len = 0;

    assert_int_equal(ms_value_dump(v, &defaults, &text, &len, &err), 0);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}


static void assert_bytes_equal(const char *a, size_t alen, const char *b,
                               size_t blen)
{
    assert_int_equal(alen, blen);
    assert_memory_equal(a, b, alen);
}


/* Nested single-element arrays around 1: depth levels deep. */
static bytes_t nested_arrays(int depth)
{
    bytes_t b = {malloc((size_t)depth + 1), (size_t)depth + 1};

    assert_non_null(b.data);
    memset(b.data, 0x91, (size_t)depth);
    b.data[depth] = 0x01;
    return b;
}


/* {"a":{"a":...1}} nesting depth maps. */
static bytes_t nested_maps(int depth)
{
    static const char level[3] = {'\x81', '\xa1', 'a'};
    bytes_t b = {malloc((size_t)depth * 3 + 1), (size_t)depth * 3 + 1};

    assert_non_null(b.data);
    for (int i = 0; i < depth; i++)
        memcpy(b.data + i * 3, level, sizeof(level));
    b.data[depth * 3] = 0x01;
    return b;
}


static char *nested_json(int depth)
{
    char *s = malloc((size_t)depth * 2 + 2);

    assert_non_null(s);
    memset(s, '[', (size_t)depth);
    s[depth] = '1';
    memset(s + depth + 1, ']', (size_t)depth);
    s[depth * 2 + 1] = '\0';
    return s;
}


typedef struct refuse_case_s {
    const char *name;
    const char *bytes;
    size_t len;
    int code;
    const char *msg; /* the whole message */
} refuse_case_t;

// clang-format off
static const refuse_case_t refuse_cases[] = {
    {"bin8", B("\xc4\x01\x00"), MS_EINVAL,
     "value: binary data has no JSON form"},
    {"bin in array in map", B("\x81\xa8" "settings" "\x93\x00\x01\xc4\x00"),
     MS_EINVAL, "value.settings[2]: binary data has no JSON form"},
    {"bin32", B("\xc6\x00\x00\x00\x01" "x"), MS_EINVAL,
     "value: binary data has no JSON form"},
    {"fixext1", B("\xd4\x01\x00"), MS_EINVAL,
     "value: extension types have no JSON form"},
    {"timestamp32", B("\xd6\xff\x00\x00\x00\x00"), MS_EINVAL,
     "value: extension types have no JSON form"},
    {"timestamp64", B("\xd7\xff\x00\x00\x00\x00\x00\x00\x00\x00"),
     MS_EINVAL, "value: extension types have no JSON form"},
    {"timestamp96",
     B("\xc7\x0c\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
     MS_EINVAL, "value: extension types have no JSON form"},
    {"ext in map", B("\x81\xa1" "t" "\xd6\xff\x00\x00\x00\x00"), MS_EINVAL,
     "value.t: extension types have no JSON form"},
    {"uint64 2^63", B("\xcf\x80\x00\x00\x00\x00\x00\x00\x00"), MS_EINVAL,
     "value: integer is above 2^63-1"},
    {"uint64 max", B("\xcf\xff\xff\xff\xff\xff\xff\xff\xff"), MS_EINVAL,
     "value: integer is above 2^63-1"},
    {"float32 NaN", B("\xca\x7f\xc0\x00\x00"), MS_EINVAL,
     "value: NaN and infinities have no JSON form"},
    {"float32 +Inf", B("\xca\x7f\x80\x00\x00"), MS_EINVAL,
     "value: NaN and infinities have no JSON form"},
    {"float32 -Inf", B("\xca\xff\x80\x00\x00"), MS_EINVAL,
     "value: NaN and infinities have no JSON form"},
    {"float64 NaN", B("\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"), MS_EINVAL,
     "value: NaN and infinities have no JSON form"},
    {"float64 +Inf", B("\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00"), MS_EINVAL,
     "value: NaN and infinities have no JSON form"},
    {"float64 -Inf", B("\xcb\xff\xf0\x00\x00\x00\x00\x00\x00"), MS_EINVAL,
     "value: NaN and infinities have no JSON form"},
    {"float64 -Inf in array", B("\x92\x01\xcb\xff\xf0\x00\x00\x00\x00\x00"
                                "\x00"),
     MS_EINVAL, "value[1]: NaN and infinities have no JSON form"},
    {"str 0xff", B("\xa1\xff"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"str lone continuation", B("\xa1\x80"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"str overlong 2", B("\xa2\xc0\x80"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"str overlong 3", B("\xa3\xe0\x80\x80"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"str overlong 4", B("\xa4\xf0\x80\x80\x80"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"str surrogate", B("\xa3\xed\xa0\x80"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"str above U+10FFFF", B("\xa4\xf4\x90\x80\x80"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"str truncated", B("\xa2\xe2\x82"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"str8 bad tail", B("\xd9\x03" "ab" "\xc3"), MS_EINVAL,
     "value: string is not valid UTF-8"},
    {"key invalid UTF-8", B("\x81\xa1\xff\x01"), MS_EINVAL,
     "value: map key #0 is not valid UTF-8"},
    {"key int", B("\x81\x01\x01"), MS_EINVAL,
     "value: map key #0 is not a string"},
    {"key negative int", B("\x81\xff\x01"), MS_EINVAL,
     "value: map key #0 is not a string"},
    {"key nil", B("\x81\xc0\x01"), MS_EINVAL,
     "value: map key #0 is not a string"},
    {"key bin", B("\x81\xc4\x01" "a" "\x01"), MS_EINVAL,
     "value: map key #0 is not a string"},
    {"key array", B("\x81\x90\x01"), MS_EINVAL,
     "value: map key #0 is not a string"},
    {"key second", B("\x82\xa1" "a" "\x01\xc3\x01"), MS_EINVAL,
     "value: map key #1 is not a string"},
    {"key nested", B("\x81\xa1" "x" "\x91\x81\x01\x01"), MS_EINVAL,
     "value.x[0]: map key #0 is not a string"},
    {"key duplicate", B("\x82\xa1" "a" "\x01\xa1" "a" "\x02"), MS_EINVAL,
     "value.a: duplicate map key"},
    {"key duplicate later", B("\x83\xa1" "a" "\x01\xa1" "b" "\x01\xa1" "a"
                              "\x01"),
     MS_EINVAL, "value.a: duplicate map key"},
    {"key with NUL", B("\x81\xa2" "a" "\x00" "\x01"), MS_EINVAL,
     "value: map key #0 holds NUL"},
    {"key NUL only", B("\x81\xa1\x00\x01"), MS_EINVAL,
     "value: map key #0 holds NUL"},
    {"odd keys escaped",
     B("\x81\xa3" "a.b" "\x81\xa3" "\"q\"" "\x81\xa2\xc3\xa9\x81\xa0\xc4"
       "\x00"),
     MS_EINVAL,
     "value[\"a.b\"][\"\\\"q\\\"\"][\"\\xc3\\xa9\"][\"\"]: "
     "binary data has no JSON form"},
};
// clang-format on

static void test_refused(void **state)
{
    (void)state;

    for (size_t i = 0; i < sizeof(refuse_cases) / sizeof(refuse_cases[0]);
         i++) {
        const refuse_case_t *tc = &refuse_cases[i];
        ms_error_t err = {0};
        json_t *v = json_true();
        int rc;

        print_message("refused: %s\n", tc->name);
        rc = from_bytes(tc->bytes, tc->len, &defaults, &v, &err);
        assert_int_equal(rc, tc->code);
        assert_int_equal(err.code, tc->code);
        assert_string_equal(err.msg, tc->msg);
        assert_null(v);
    }
}


/* The same refusals through the byte-level entry point. */
static void test_refused_to_json(void **state)
{
    (void)state;

    for (size_t i = 0; i < sizeof(refuse_cases) / sizeof(refuse_cases[0]);
         i++) {
        const refuse_case_t *tc = &refuse_cases[i];
        ms_error_t err = {0};
        char *text = (char *)"";
        size_t len = 0;
        int rc;

        rc = ms_value_msgpack_to_json(tc->bytes, tc->len, &defaults, &text,
                                      &len, &err);
        assert_int_equal(rc, tc->code);
        assert_string_equal(err.msg, tc->msg);
        assert_null(text);
    }
}


typedef struct accept_case_s {
    const char *bytes;
    size_t len;
    const char *json;
    int canonical; /* ms_value_pack gives the same bytes back */
} accept_case_t;

// clang-format off
static const accept_case_t accept_cases[] = {
    {B("\xc0"), "null", 1},
    {B("\xc3"), "true", 1},
    {B("\xc2"), "false", 1},
    {B("\x00"), "0", 1},
    {B("\x7f"), "127", 1},
    {B("\xff"), "-1", 1},
    {B("\xd0\x80"), "-128", 1},
    {B("\xcc\xff"), "255", 1},
    {B("\xd0\x05"), "5", 0},
    {B("\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"), "9223372036854775807", 1},
    {B("\xd3\x80\x00\x00\x00\x00\x00\x00\x00"), "-9223372036854775808", 1},
    {B("\xcf\x00\x20\x00\x00\x00\x00\x00\x01"), "9007199254740993", 1},
    {B("\xca\x3f\x00\x00\x00"), "0.5", 0},
    {B("\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00"), "1.0", 1},
    {B("\xa0"), "\"\"", 1},
    {B("\xa3" "a" "\x00" "b"), "\"a\\u0000b\"", 1},
    {B("\xa1\x00"), "\"\\u0000\"", 1},
    {B("\xa2\xc3\xa9"), "\"\xc3\xa9\"", 1},
    {B("\xa3\xef\xbf\xbf"), "\"\xef\xbf\xbf\"", 1},
    {B("\xa4\xf0\x9f\x98\x80"), "\"\xf0\x9f\x98\x80\"", 1},
    {B("\xa4\xf4\x8f\xbf\xbf"), "\"\xf4\x8f\xbf\xbf\"", 1},
    {B("\x90"), "[]", 1},
    {B("\x80"), "{}", 1},
    {B("\x92\x90\x80"), "[[],{}]", 1},
    {B("\x82\xa1" "a" "\x90\xa1" "b" "\x80"), "{\"a\":[],\"b\":{}}", 1},
    {B("\x81\xa0\x01"), "{\"\":1}", 1},
    {B("\x81\xa1" "s" "\xa3" "x" "\x00" "y"), "{\"s\":\"x\\u0000y\"}", 1},
    {B("\x84\xa1" "z" "\x01\xa1" "a" "\x02\xa1" "m" "\x03\xa1" "b" "\x04"),
     "{\"z\":1,\"a\":2,\"m\":3,\"b\":4}", 1},
    {B("\x81\xa8" "settings" "\x93\x00\xc0\x81\xa2\xc3\xa9\xc3"),
     "{\"settings\":[0,null,{\"\xc3\xa9\":true}]}", 1},
};
// clang-format on

static void test_accepted(void **state)
{
    (void)state;

    for (size_t i = 0; i < sizeof(accept_cases) / sizeof(accept_cases[0]);
         i++) {
        const accept_case_t *tc = &accept_cases[i];
        ms_error_t err = {0};
        json_t *v = NULL;
        char *text;

        print_message("accepted: %s\n", tc->json);
        assert_int_equal(from_bytes(tc->bytes, tc->len, &defaults, &v, &err),
                         0);
        text = dump(v);
        assert_string_equal(text, tc->json);
        if (tc->canonical) {
            bytes_t b = pack(v);

            assert_bytes_equal(b.data, b.len, tc->bytes, tc->len);
            free(b.data);
        }
        free(text);
        json_decref(v);
    }
}


/* msgpack -> JSON text -> msgpack through the byte-level entry points. */
static void test_accepted_round_trip(void **state)
{
    (void)state;

    for (size_t i = 0; i < sizeof(accept_cases) / sizeof(accept_cases[0]);
         i++) {
        const accept_case_t *tc = &accept_cases[i];
        ms_error_t err = {0};
        char *text, *back;
        size_t len, back_len;

        assert_int_equal(ms_value_msgpack_to_json(tc->bytes, tc->len, &defaults,
                                                  &text, &len, &err),
                         0);
        assert_string_equal(text, tc->json);
        assert_int_equal(len, strlen(tc->json));
        assert_int_equal(ms_value_json_to_msgpack(text, len, &defaults, &back,
                                                  &back_len, &err),
                         0);
        if (tc->canonical)
            assert_bytes_equal(back, back_len, tc->bytes, tc->len);
        free(back);
        free(text);
    }
}


static void test_string_with_nul(void **state)
{
    static const char with_nul[] = {'\xa5', 'a', '\0', 'b', '\0', 'c'};
    ms_error_t err = {0};
    json_t *v = NULL;
    (void)state;

    assert_int_equal(
        from_bytes(with_nul, sizeof(with_nul), &defaults, &v, &err), 0);
    assert_true(json_is_string(v));
    assert_int_equal(json_string_length(v), 5);
    assert_memory_equal(json_string_value(v), "a\0b\0c", 5);
    json_decref(v);

    assert_int_equal(ms_value_parse(B("\"a\\u0000b\""), &defaults, &v, &err),
                     0);
    assert_int_equal(json_string_length(v), 3);
    assert_memory_equal(json_string_value(v), "a\0b", 3);
    json_decref(v);
}


static const int64_t big_ints[] = {
    9007199254740993LL,
    -9007199254740993LL,
    9007199254740992LL,
    INT64_MAX,
    INT64_MIN,
    INT64_MAX - 1,
    INT64_MIN + 1,
    4294967296LL,
    -4294967297LL,
    1234567890123456789,
    0,
};

static void check_big_int(int64_t n)
{
    char want[32], *text, *back;
    size_t text_len, back_len;
    ms_error_t err = {0};
    msgpack_sbuffer sb;
    msgpack_packer pk;
    json_t *v = NULL;

    snprintf(want, sizeof(want), "%" PRId64, n);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    assert_int_equal(msgpack_pack_int64(&pk, n), 0);

    /* msgpack -> Jansson -> text -> Jansson -> msgpack. */
    assert_int_equal(from_bytes(sb.data, sb.size, &defaults, &v, &err), 0);
    assert_true(json_is_integer(v));
    assert_true(json_integer_value(v) == n);
    json_decref(v);
    assert_int_equal(ms_value_msgpack_to_json(sb.data, sb.size, &defaults,
                                              &text, &text_len, &err),
                     0);
    assert_string_equal(text, want);
    assert_int_equal(ms_value_parse(text, text_len, &defaults, &v, &err), 0);
    assert_true(json_is_integer(v));
    assert_true(json_integer_value(v) == n);
    json_decref(v);
    assert_int_equal(ms_value_json_to_msgpack(text, text_len, &defaults, &back,
                                              &back_len, &err),
                     0);
    assert_bytes_equal(back, back_len, sb.data, sb.size);

    free(back);
    free(text);
    msgpack_sbuffer_destroy(&sb);
}


static void test_big_ints(void **state)
{
    (void)state;

    for (size_t i = 0; i < sizeof(big_ints) / sizeof(big_ints[0]); i++)
        check_big_int(big_ints[i]);
}


static void test_big_ints_in_containers(void **state)
{
    static const char text[] =
        "{\"id\":9007199254740993,\"l\":[-9223372036854775808,"
        "9223372036854775807]}";
    ms_error_t err = {0};
    char *mp, *back;
    size_t mp_len, back_len;
    (void)state;

    assert_int_equal(
        ms_value_json_to_msgpack(B(text), &defaults, &mp, &mp_len, &err), 0);
    assert_int_equal(
        ms_value_msgpack_to_json(mp, mp_len, &defaults, &back, &back_len, &err),
        0);
    assert_string_equal(back, text);
    free(back);
    free(mp);
}


static const double doubles[] = {
    0.1,
    1e300,
    -0.0,
    5e-324,
    DBL_MAX,
    -DBL_MAX,
    DBL_MIN,
    1.0 / 3.0,
    -2.5e-10,
    123456789.123456789,
    9007199254740993.0,
    1e21,
    0.0,
    2.0,
};

static void check_double(double d)
{
    char *text, *back;
    size_t text_len, back_len;
    ms_error_t err = {0};
    msgpack_sbuffer sb;
    msgpack_packer pk;
    json_t *v = NULL;
    double got;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    assert_int_equal(msgpack_pack_double(&pk, d), 0);

    assert_int_equal(ms_value_msgpack_to_json(sb.data, sb.size, &defaults,
                                              &text, &text_len, &err),
                     0);
    print_message("double: %s\n", text);
    assert_int_equal(ms_value_parse(text, text_len, &defaults, &v, &err), 0);
    assert_true(json_is_real(v));
    got = json_real_value(v);
    /* Bit for bit: -0.0 must not come back as 0.0. */
    assert_memory_equal(&got, &d, sizeof(d));
    json_decref(v);

    assert_int_equal(ms_value_json_to_msgpack(text, text_len, &defaults, &back,
                                              &back_len, &err),
                     0);
    assert_bytes_equal(back, back_len, sb.data, sb.size);
    free(back);
    free(text);
    msgpack_sbuffer_destroy(&sb);
}


static void test_doubles(void **state)
{
    json_t *v;
    char *text;
    (void)state;

    for (size_t i = 0; i < sizeof(doubles) / sizeof(doubles[0]); i++)
        check_double(doubles[i]);

    v = json_real(-0.0);
    text = dump(v);
    assert_string_equal(text, "-0.0");
    free(text);
    json_decref(v);
}


static void check_depth(bytes_t b, const ms_value_limits_t *lim, int rc)
{
    ms_error_t err = {0};
    json_t *v = NULL;

    assert_int_equal(from_bytes(b.data, b.len, lim, &v, &err), rc);
    if (rc == 0)
        assert_non_null(v);
    else
        assert_null(v);
    json_decref(v);
    free(b.data);
}


static void test_depth_msgpack(void **state)
{
    static const ms_value_limits_t two = {1024, 2};
    static const ms_value_limits_t zero = {1024, 0};
    static const ms_value_limits_t huge = {1024, 100};
    ms_error_t err = {0};
    json_t *v = NULL;
    bytes_t b;
    (void)state;

    check_depth(nested_arrays(31), &defaults, 0);
    check_depth(nested_arrays(32), &defaults, MS_ETOOLARGE);
    check_depth(nested_maps(31), &defaults, 0);
    check_depth(nested_maps(32), &defaults, MS_ETOOLARGE);
    check_depth(nested_arrays(32), &huge, MS_ETOOLARGE);
    check_depth(nested_arrays(2), &two, 0);
    check_depth(nested_maps(3), &two, MS_ETOOLARGE);
    check_depth(nested_arrays(0), &zero, 0);
    check_depth(nested_arrays(1), &zero, MS_ETOOLARGE);

    b = nested_arrays(3);
    assert_int_equal(from_bytes(b.data, b.len, &two, &v, &err), MS_ETOOLARGE);
    assert_string_equal(err.msg, "value[0][0]: nested deeper than 2 levels");
    free(b.data);

    b = nested_maps(32);
    assert_int_equal(from_bytes(b.data, b.len, &defaults, &v, &err),
                     MS_ETOOLARGE);
    assert_non_null(strstr(err.msg, ".a.a: nested deeper than 31 levels"));
    free(b.data);
}


static void test_depth_to_json(void **state)
{
    ms_error_t err = {0};
    char *text = NULL;
    bytes_t b;
    (void)state;

    b = nested_arrays(31);
    assert_int_equal(
        ms_value_msgpack_to_json(b.data, b.len, &defaults, &text, NULL, &err),
        0);
    assert_int_equal(strlen(text), 63);
    free(text);
    free(b.data);

    b = nested_maps(32);
    assert_int_equal(
        ms_value_msgpack_to_json(b.data, b.len, &defaults, &text, NULL, &err),
        MS_ETOOLARGE);
    assert_null(text);
    free(b.data);
}


static void test_depth_parse(void **state)
{
    static const ms_value_limits_t two = {1024, 2};
    static const struct {
        int depth;
        const ms_value_limits_t *lim;
        int rc;
    } cases[] = {
        {31, &defaults, 0},
        {32, &defaults, MS_ETOOLARGE},
        {5000, &defaults, MS_ETOOLARGE},
        {2, &two, 0},
        {3, &two, MS_ETOOLARGE},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = nested_json(cases[i].depth);
        ms_error_t err = {0};
        json_t *v = NULL;

        assert_int_equal(
            ms_value_parse(text, strlen(text), cases[i].lim, &v, &err),
            cases[i].rc);
        assert_true((v != NULL) == (cases[i].rc == 0));
        json_decref(v);
        free(text);
    }
}


static void test_size_parse(void **state)
{
    static const char text[] = "{\"a\":[1,2,3]}";
    ms_value_limits_t lim = {sizeof(text) - 1, MS_VALUE_DEPTH_CAP};
    ms_error_t err = {0};
    json_t *v = NULL;
    char *mp = NULL;
    size_t mp_len;
    (void)state;

    assert_int_equal(ms_value_parse(B(text), &lim, &v, &err), 0);
    json_decref(v);
    assert_int_equal(
        ms_value_json_to_msgpack(B(text), &lim, &mp, &mp_len, &err), 0);
    free(mp);

    lim.max_bytes--;
    assert_int_equal(ms_value_parse(B(text), &lim, &v, &err), MS_ETOOLARGE);
    assert_null(v);
    assert_int_equal(
        ms_value_json_to_msgpack(B(text), &lim, &mp, &mp_len, &err),
        MS_ETOOLARGE);
    assert_null(mp);
}


/* A value large enough that the dump buffer grows several times. */
static json_t *big_array(void)
{
    json_t *a = json_array();

    assert_non_null(a);
    for (int i = 0; i < 3000; i++) {
        json_t *s = json_sprintf("item %d", i);

        assert_non_null(s);
        assert_int_equal(json_array_append_new(a, s), 0);
    }
    return a;
}


static void test_size_dump(void **state)
{
    json_t *v = big_array();
    char *full, *text, *jansson;
    size_t full_len, len;
    ms_value_limits_t lim = {0, MS_VALUE_DEPTH_CAP};
    ms_error_t err = {0};
    (void)state;

    assert_int_equal(ms_value_dump(v, NULL, &full, &full_len, &err), 0);
    jansson = json_dumps(v, JSON_COMPACT);
    assert_string_equal(full, jansson);
    free(jansson);

    lim.max_bytes = full_len;
    assert_int_equal(ms_value_dump(v, &lim, &text, &len, &err), 0);
    assert_int_equal(len, full_len);
    assert_string_equal(text, full);
    free(text);

    lim.max_bytes = full_len - 1;
    assert_int_equal(ms_value_dump(v, &lim, &text, &len, &err), MS_ETOOLARGE);
    assert_int_equal(err.code, MS_ETOOLARGE);
    assert_null(text);

    lim.max_bytes = 1;
    assert_int_equal(ms_value_dump(v, &lim, &text, NULL, &err), MS_ETOOLARGE);
    free(full);
    json_decref(v);
}


/* The JSON size limit also applies to msgpack -> JSON. */
static void test_size_to_json(void **state)
{
    json_t *v = big_array();
    bytes_t b = pack(v);
    ms_value_limits_t lim = {0, MS_VALUE_DEPTH_CAP};
    ms_error_t err = {0};
    char *text;
    size_t len;
    (void)state;

    assert_int_equal(
        ms_value_msgpack_to_json(b.data, b.len, NULL, &text, &len, &err), 0);
    free(text);
    lim.max_bytes = len;
    assert_int_equal(
        ms_value_msgpack_to_json(b.data, b.len, &lim, &text, &len, &err), 0);
    free(text);
    lim.max_bytes--;
    assert_int_equal(
        ms_value_msgpack_to_json(b.data, b.len, &lim, &text, &len, &err),
        MS_ETOOLARGE);
    assert_null(text);
    free(b.data);
    json_decref(v);
}


static void test_parse_big_integer_as_real(void **state)
{
    ms_error_t err = {0};
    json_t *v = NULL;
    (void)state;

    assert_int_equal(
        ms_value_parse(B("12345678901234567890"), &defaults, &v, &err), 0);
    assert_true(json_is_real(v));
    assert_true(json_real_value(v) == 12345678901234567890.0);
    json_decref(v);

    assert_int_equal(
        ms_value_parse(B("-12345678901234567890"), &defaults, &v, &err), 0);
    assert_true(json_real_value(v) == -12345678901234567890.0);
    json_decref(v);

    assert_int_equal(
        ms_value_parse(B("9223372036854775808"), &defaults, &v, &err), 0);
    assert_true(json_is_real(v));
    json_decref(v);

    /* Like JavaScript, the whole text is read with doubles. */
    assert_int_equal(ms_value_parse(B("{\"a\":1,\"b\":99999999999999999999}"),
                                    &defaults, &v, &err),
                     0);
    assert_true(json_is_real(json_object_get(v, "a")));
    assert_true(json_real_value(json_object_get(v, "a")) == 1.0);
    assert_true(json_real_value(json_object_get(v, "b")) == 1e20);
    json_decref(v);

    assert_int_equal(
        ms_value_parse(B("9223372036854775807"), &defaults, &v, &err), 0);
    assert_true(json_is_integer(v));
    json_decref(v);
}


static void test_parse_refused(void **state)
{
    static const struct {
        const char *text;
        size_t len;
    } cases[] = {
        {B("")},
        {B("secret")},
        {B("NaN")},
        {B("Infinity")},
        {B("-Infinity")},
        {B("[1,]")},
        {B("{\"a\":1")},
        {B("1e400")},
        {B("-1e400")},
        {B("[1] 2")},
        {B("\"\\ud800\"")},
        {B("\"\xff\"")},
        {B("{\"a\\u0000b\":1}")},
        {B("1111111111111111111111111111111111111111111111111111111111111111"
           "1111111111111111111111111111111111111111111111111111111111111111"
           "1111111111111111111111111111111111111111111111111111111111111111"
           "1111111111111111111111111111111111111111111111111111111111111111"
           "1111111111111111111111111111111111111111111111111111111111111111")},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_error_t err = {0};
        json_t *v = json_true();

        assert_int_equal(
            ms_value_parse(cases[i].text, cases[i].len, &defaults, &v, &err),
            MS_EINVAL);
        assert_null(v);
        assert_null(strstr(err.msg, "secret"));
    }
}


static void test_parse_accepted(void **state)
{
    static const struct {
        const char *text;
        const char *compact;
    } cases[] = {
        {"1", "1"},
        {"\"s\"", "\"s\""},
        {"null", "null"},
        {" \n[1, 2.5, true]\t", "[1,2.5,true]"},
        {"{\"b\":1,\"a\":{\"d\":[],\"c\":{}}}",
         "{\"b\":1,\"a\":{\"d\":[],\"c\":{}}}"},
        /* Text written by others may repeat a key: the last one wins. */
        {"{\"a\":1,\"a\":2}", "{\"a\":2}"},
        {"\"\\u00e9\\ud83d\\ude00\"", "\"\xc3\xa9\xf0\x9f\x98\x80\""},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_error_t err = {0};
        json_t *v = NULL;
        char *text;

        assert_int_equal(ms_value_parse(cases[i].text, strlen(cases[i].text),
                                        &defaults, &v, &err),
                         0);
        text = dump(v);
        assert_string_equal(text, cases[i].compact);
        free(text);
        json_decref(v);
    }
}


/* 31 maps under 100-byte keys: the path is cut, the reason kept. */
static void test_path_bounded(void **state)
{
    char buf[31 * 103 + 2];
    size_t n = 0;
    ms_error_t err = {0};
    json_t *v = NULL;
    size_t len;
    (void)state;

    for (int i = 0; i < 31; i++) {
        memcpy(buf + n, "\x81\xd9\x64", 3);
        memset(buf + n + 3, 'k', 100);
        n += 103;
    }
    memcpy(buf + n, "\xc4\x00", 2);
    n += 2;

    assert_int_equal(from_bytes(buf, n, &defaults, &v, &err), MS_EINVAL);
    len = strlen(err.msg);
    assert_true(len < MS_ERRMSG_MAX - 1);
    assert_true(strncmp(err.msg, "value...", 8) == 0);
    print_message("path: %s\n", err.msg);
    assert_non_null(strstr(err.msg, ".kkkkkkkkkkkkkkkkkkkk"));
    assert_non_null(strstr(err.msg, "k....k"));
    assert_string_equal(err.msg + len - 28, "binary data has no JSON form");
    assert_true(len > 28);
}


static void test_dump_invalid_string(void **state)
{
    json_t *v = json_stringn_nocheck("\xff", 1);
    ms_error_t err = {0};
    char *text;
    (void)state;

    assert_non_null(v);
    assert_int_equal(ms_value_dump(v, NULL, &text, NULL, &err), MS_EINVAL);
    assert_null(text);
    json_decref(v);
}


static void test_msgpack_bytes_refused(void **state)
{
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {B("")},
        {B("\x92\x01")},
        {B("\x01\x02")},
        {B("\xc1")},
        {B("\xdd\xff\xff\xff\xff")},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_error_t err = {0};
        char *text = (char *)"";

        assert_int_equal(ms_value_msgpack_to_json(cases[i].bytes, cases[i].len,
                                                  &defaults, &text, NULL, &err),
                         MS_EINVAL);
        assert_null(text);
    }
}


/*
 * A value whose elements alone exceed the size limit is refused before it
 * is converted: the budget runs out after max_bytes elements.
 */
static void test_element_budget(void **state)
{
    ms_value_limits_t lim = {.max_bytes = 1000, .max_depth = 31};
    msgpack_object items[2000];
    msgpack_object arr = {.type = MSGPACK_OBJECT_ARRAY};
    ms_error_t err = {0, ""};
    json_t *v = NULL;

    (void)state;
    for (size_t i = 0; i < 2000; i++)
        items[i].type = MSGPACK_OBJECT_NIL;
    arr.via.array.ptr = items;
    arr.via.array.size = 2000;
    assert_int_equal(ms_value_from_msgpack(&arr, &lim, &v, &err), MS_ETOOLARGE);
    assert_null(v);
    assert_non_null(strstr(err.msg, "too large as JSON"));

    /* 199 nulls dump to 199 * 5 + 1 bytes: under the limit, accepted. */
    arr.via.array.size = 199;
    assert_int_equal(ms_value_from_msgpack(&arr, &lim, &v, &err), 0);
    assert_int_equal(json_array_size(v), 199);
    json_decref(v);
}


/*
 * A sidecar caches its own write by packing the value it built, and
 * every other sidecar by converting the JSON text Redis got: the bytes
 * must be the same, or two sidecars would answer one value differently.
 */
static void test_pack_matches_text(void **state)
{
    static const char *const texts[] = {
        "{\"z\":1,\"a\":{\"y\":[1,2.5,null],\"b\":\"x\"},\"m\":true}",
        "[0.1,1e300,-0.0,2.0,-9223372036854775808,9223372036854775807]",
        "{\"\\u00e9t\\u00e9\":\"\\ud83d\\ude00\",\"\":{}}",
        "\"plain\"",
        "{\"deep\":{\"a\":{\"b\":{\"c\":[[[]]]}}}}",
    };
    ms_value_limits_t lim = {.max_bytes = 65536, .max_depth = 32};
    ms_error_t err = {0, ""};

    (void)state;
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        json_t *v = NULL;
        char *text = NULL, *mp = NULL;
        size_t text_len = 0, mp_len = 0;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        assert_int_equal(
            ms_value_parse(texts[i], strlen(texts[i]), &lim, &v, &err), 0);
        assert_int_equal(ms_value_pack(v, &pk), 0);
        assert_int_equal(ms_value_dump(v, &lim, &text, &text_len, &err), 0);
        assert_int_equal(
            ms_value_json_to_msgpack(text, text_len, &lim, &mp, &mp_len, &err),
            0);
        assert_int_equal(sb.size, mp_len);
        assert_memory_equal(sb.data, mp, mp_len);
        free(text);
        free(mp);
        json_decref(v);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* ms_value_dump writes what Jansson's own dump writes, byte for byte. */
static void test_dump_matches_jansson(void **state)
{
    static const char *const texts[] = {
        "{\"a\":\"q\\\"b\\\\s\\/l\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\"}",
        "[\"\\u0000x\",\"\\u00e9\\u4e2d\\ud83d\\ude00\",\"\\u2028\"]",
        "{\"k\\n\\\"\":{\"\":[],\"x\":{}},\"n\":-9223372036854775808}",
        "[9223372036854775807,0,-1,1.5,-0.0,1e300,2.5e-8,0.1,100.0]",
        "[true,false,null,\"\",[[[]]],{\"a\":{\"b\":{\"c\":1}}}]",
        "\"plain\"",
        "12",
    };
    ms_value_limits_t lim = {.max_bytes = 65536, .max_depth = 32};
    const size_t flags =
        JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17);
    ms_error_t err = {0, ""};

    (void)state;
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        json_t *v = NULL;
        char *ours = NULL, *theirs;
        size_t len = 0;

        assert_int_equal(
            ms_value_parse(texts[i], strlen(texts[i]), &lim, &v, &err), 0);
        assert_int_equal(ms_value_dump(v, &lim, &ours, &len, &err), 0);
        theirs = json_dumps(v, flags);
        assert_non_null(theirs);
        assert_int_equal(len, strlen(theirs));
        assert_memory_equal(ours, theirs, len);
        free(ours);
        free(theirs);
        json_decref(v);
    }
}

/* The length of the character a string starts with, 0 when it is none. */
static void test_utf8_char(void **state)
{
    static const struct {
        const char *s;
        size_t len, want;
    } cases[] = {
        {"a", 1, 1},
        {"", 0, 0},
        {"\0", 1, 1},
        {"\xc3\xa9x", 3, 2},
        {"\xe2\x82\xac", 3, 3},
        {"\xf0\x9f\x98\x80", 4, 4},
        {"\xe2\x82", 2, 0},         /* cut short */
        {"\xff", 1, 0},             /* never in UTF-8 */
        {"\x80", 1, 0},             /* a continuation alone */
        {"\xc0\x80", 2, 0},         /* overlong */
        {"\xed\xa0\x80", 3, 0},     /* a surrogate */
        {"\xf4\x90\x80\x80", 4, 0}, /* above U+10FFFF */
        {"\xc3(", 2, 0},            /* a lead without its tail */
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (ms_utf8_char(cases[i].s, cases[i].len) != cases[i].want)
            fail_msg("case %zu: %zu, want %zu", i,
                     ms_utf8_char(cases[i].s, cases[i].len), cases[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_char),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_refused_to_json),
        cmocka_unit_test(test_accepted),
        cmocka_unit_test(test_accepted_round_trip),
        cmocka_unit_test(test_string_with_nul),
        cmocka_unit_test(test_big_ints),
        cmocka_unit_test(test_big_ints_in_containers),
        cmocka_unit_test(test_doubles),
        cmocka_unit_test(test_depth_msgpack),
        cmocka_unit_test(test_depth_to_json),
        cmocka_unit_test(test_depth_parse),
        cmocka_unit_test(test_size_parse),
        cmocka_unit_test(test_size_dump),
        cmocka_unit_test(test_size_to_json),
        cmocka_unit_test(test_parse_big_integer_as_real),
        cmocka_unit_test(test_parse_refused),
        cmocka_unit_test(test_parse_accepted),
        cmocka_unit_test(test_path_bounded),
        cmocka_unit_test(test_dump_invalid_string),
        cmocka_unit_test(test_msgpack_bytes_refused),
        cmocka_unit_test(test_element_budget),
        cmocka_unit_test(test_pack_matches_text),
        cmocka_unit_test(test_dump_matches_jansson),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
