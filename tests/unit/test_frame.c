/*
 * test_frame.c - unit tests for the frame reader and writer and for
 * ms_msgpack_check(), fed raw bytes: split, truncated, oversized, corrupt
 * and random ones.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "frame.h"

#define READ_CHUNK (64 * 1024)

/* A growable byte string for building streams and collecting output. */
typedef struct bytes_s {
    char *data;
    size_t len;
    size_t cap;
} bytes_t;

static void bytes_put(bytes_t *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;

        while (cap < b->len + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        assert_non_null(b->data);
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}


static void bytes_frame(bytes_t *b, const void *body, size_t n)
{
    unsigned char h[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 8), (unsigned char)n};

    bytes_put(b, h, sizeof(h));
    bytes_put(b, body, n);
}


/* Takes every complete frame, re-framing each into out. */
static int drain(ms_frame_reader_t *r, bytes_t *out)
{
    const char *body;
    size_t len;
    int rc;
    int n = 0;

    while ((rc = ms_frame_reader_next(r, &body, &len)) == 1) {
        bytes_frame(out, body, len);
        n++;
    }
    assert_int_equal(rc, 0);
    return n;
}


/*
 * Feeds data in reads of at most chunk bytes (also capped by the room the
 * reader offers), draining after each; returns the frames seen.
 */
static int feed(ms_frame_reader_t *r, const char *data, size_t n, size_t chunk,
                bytes_t *out)
{
    size_t off = 0;
    int frames = 0;

    while (off < n) {
        char *base;
        size_t room;
        size_t take;

        assert_int_equal(ms_frame_reader_space(r, 65536, &base, &room), 0);
        assert_non_null(base);
        assert_true(room > 0);
        take = n - off < chunk ? n - off : chunk;
        take = take < room ? take : room;
        memcpy(base, data + off, take);
        ms_frame_reader_commit(r, take);
        off += take;
        frames += drain(r, out);
    }
    return frames;
}


/* A few frames of different sizes, one of them empty. */
static void sample_stream(bytes_t *s)
{
    char big[300];

    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)i;
    bytes_frame(s, "\x93\x01\x02\x03", 4);
    bytes_frame(s, "", 0);
    bytes_frame(s, big, sizeof(big));
    bytes_frame(s, "\xc0", 1);
}


static void test_reader_split_everywhere(void **state)
{
    bytes_t s = {0};

    (void)state;
    sample_stream(&s);

    for (size_t cut = 0; cut <= s.len; cut++) {
        ms_frame_reader_t r;
        bytes_t out = {0};
        int n;

        ms_frame_reader_init(&r, MS_FRAME_DEFAULT_MAX);
        n = feed(&r, s.data, cut, s.len, &out);
        n += feed(&r, s.data + cut, s.len - cut, s.len, &out);
        assert_int_equal(n, 4);
        assert_int_equal(out.len, s.len);
        assert_memory_equal(out.data, s.data, s.len);
        assert_int_equal(r.len, 0);
        ms_frame_reader_free(&r);
        free(out.data);
    }
    free(s.data);
}


static void test_reader_byte_by_byte(void **state)
{
    ms_frame_reader_t r;
    bytes_t s = {0};
    bytes_t out = {0};

    (void)state;
    sample_stream(&s);
    ms_frame_reader_init(&r, MS_FRAME_DEFAULT_MAX);
    assert_int_equal(feed(&r, s.data, s.len, 1, &out), 4);
    assert_int_equal(out.len, s.len);
    assert_memory_equal(out.data, s.data, s.len);
    ms_frame_reader_free(&r);
    free(out.data);
    free(s.data);
}


static void test_reader_many_in_one_read(void **state)
{
    ms_frame_reader_t r;
    bytes_t s = {0};
    bytes_t out = {0};
    char *base;
    size_t room;

    (void)state;
    for (int i = 0; i < 500; i++) {
        char body[20];
        int n = snprintf(body + 1, sizeof(body) - 1, "frame %d", i);

        body[0] = (char)(0xa0 | n);
        bytes_frame(&s, body, (size_t)n + 1);
    }
    assert_true(s.len < READ_CHUNK);

    ms_frame_reader_init(&r, MS_FRAME_DEFAULT_MAX);
    assert_int_equal(ms_frame_reader_space(&r, 0, &base, &room), 0);
    assert_true(room >= READ_CHUNK);
    memcpy(base, s.data, s.len);
    ms_frame_reader_commit(&r, s.len);
    assert_int_equal(drain(&r, &out), 500);
    assert_int_equal(out.len, s.len);
    assert_memory_equal(out.data, s.data, s.len);
    ms_frame_reader_free(&r);
    free(out.data);
    free(s.data);
}


static void test_reader_empty_frame(void **state)
{
    ms_frame_reader_t r;
    const char *body = NULL;
    size_t len = 99;
    char *base;
    size_t room;

    (void)state;
    ms_frame_reader_init(&r, MS_FRAME_DEFAULT_MAX);
    assert_int_equal(ms_frame_reader_space(&r, 0, &base, &room), 0);
    memset(base, 0, 4);
    ms_frame_reader_commit(&r, 4);
    assert_int_equal(ms_frame_reader_next(&r, &body, &len), 1);
    assert_non_null(body);
    assert_int_equal(len, 0);
    assert_int_equal(ms_frame_reader_next(&r, &body, &len), 0);
    ms_frame_reader_free(&r);
}


static void test_reader_huge_declared_length(void **state)
{
    static const char header[4] = {'\xff', '\xff', '\xff', '\xff'};
    ms_frame_reader_t r;
    const char *body;
    size_t len;

    (void)state;
    ms_frame_reader_init(&r, MS_FRAME_DEFAULT_MAX);

    for (int i = 0; i < 4; i++) {
        char *base;
        size_t room;

        assert_int_equal(ms_frame_reader_next(&r, &body, &len), 0);
        assert_int_equal(ms_frame_reader_space(&r, 1 << 30, &base, &room), 0);
        assert_true(room <= MS_FRAME_DEFAULT_MAX + MS_FRAME_HEADER);
        base[0] = header[i];
        ms_frame_reader_commit(&r, 1);
    }
    assert_int_equal(ms_frame_reader_next(&r, &body, &len), MS_ETOOLARGE);

    /* The reader never sized its buffer from the declared length. */
    assert_true(r.cap <= READ_CHUNK);
    ms_frame_reader_free(&r);
}


static void test_reader_exact_limit(void **state)
{
    size_t max = 1000;
    char *body = calloc(1, max + 1);
    ms_frame_reader_t r;
    bytes_t s = {0};
    bytes_t out = {0};
    const char *b;
    size_t len;
    char *base;
    size_t room;

    (void)state;
    assert_non_null(body);
    bytes_frame(&s, body, max);

    ms_frame_reader_init(&r, max);
    assert_int_equal(feed(&r, s.data, s.len, 7, &out), 1);
    assert_int_equal(out.len, s.len);
    assert_true(r.cap <= max + MS_FRAME_HEADER);

    /* One byte more is refused as soon as the header is in. */
    s.len = 0;
    bytes_frame(&s, body, max + 1);
    assert_int_equal(feed(&r, s.data, 3, 3, &out), 0);
    assert_int_equal(ms_frame_reader_space(&r, 0, &base, &room), 0);
    base[0] = s.data[3];
    ms_frame_reader_commit(&r, 1);
    assert_int_equal(ms_frame_reader_next(&r, &b, &len), MS_ETOOLARGE);
    assert_true(r.cap <= max + MS_FRAME_HEADER);

    ms_frame_reader_free(&r);
    free(out.data);
    free(s.data);
    free(body);
}


static void test_reader_default_limit(void **state)
{
    size_t max = MS_FRAME_DEFAULT_MAX;
    char *body = calloc(1, max);
    ms_frame_reader_t r;
    bytes_t s = {0};
    bytes_t out = {0};

    (void)state;
    assert_non_null(body);
    bytes_frame(&s, body, max);
    bytes_frame(&s, "\xc3", 1);

    ms_frame_reader_init(&r, max);
    assert_int_equal(feed(&r, s.data, s.len, 100000, &out), 2);
    assert_int_equal(out.len, s.len);
    assert_memory_equal(out.data, s.data, s.len);
    assert_true(r.cap <= max + MS_FRAME_HEADER);
    ms_frame_reader_free(&r);
    free(out.data);
    free(s.data);
    free(body);
}


static void test_reader_offers_rest_of_frame(void **state)
{
    static const char header[4] = {0, 8, 0, 0}; /* 512 KiB */
    ms_frame_reader_t r;
    char *base;
    size_t room;

    (void)state;
    ms_frame_reader_init(&r, MS_FRAME_DEFAULT_MAX);
    assert_int_equal(ms_frame_reader_space(&r, 0, &base, &room), 0);
    assert_true(room >= READ_CHUNK);
    memcpy(base, header, sizeof(header));
    ms_frame_reader_commit(&r, sizeof(header));
    assert_int_equal(ms_frame_reader_space(&r, 0, &base, &room), 0);
    assert_true(room >= 512 * 1024);
    assert_true(r.cap <= MS_FRAME_DEFAULT_MAX + MS_FRAME_HEADER);
    ms_frame_reader_free(&r);
}


static void test_reader_small_limit(void **state)
{
    ms_frame_reader_t r;
    bytes_t s = {0};
    bytes_t out = {0};

    (void)state;
    for (int i = 0; i < 50; i++)
        bytes_frame(&s, "0123456789abcdef", (size_t)(i % 17));

    ms_frame_reader_init(&r, 16);
    assert_int_equal(feed(&r, s.data, s.len, s.len, &out), 50);
    assert_int_equal(out.len, s.len);
    assert_memory_equal(out.data, s.data, s.len);
    assert_true(r.cap <= 16 + MS_FRAME_HEADER);
    ms_frame_reader_free(&r);
    free(out.data);
    free(s.data);
}


static void test_reader_no_growth(void **state)
{
    static const size_t chunks[] = {1, 13, 4096, 70000, 3, 65536, 999};
    ms_frame_reader_t r;
    bytes_t s = {0};
    bytes_t out = {0};
    size_t off = 0;
    size_t settled = 0;
    int frames = 0;

    (void)state;
    for (int i = 0; i < 10000; i++)
        bytes_frame(&s, "\x92\xa3one\xcd\x01\x00", (size_t)(1 + i % 8));

    ms_frame_reader_init(&r, MS_FRAME_DEFAULT_MAX);
    for (size_t i = 0; off < s.len; i++) {
        size_t n = chunks[i % 7];

        if (n > s.len - off)
            n = s.len - off;
        frames += feed(&r, s.data + off, n, n, &out);
        off += n;
        if (i == 10)
            settled = r.cap;
        if (i > 10)
            assert_int_equal(r.cap, settled);
        assert_true(r.cap <= READ_CHUNK);
    }
    assert_int_equal(frames, 10000);
    assert_int_equal(out.len, s.len);
    assert_memory_equal(out.data, s.data, s.len);
    ms_frame_reader_free(&r);
    free(out.data);
    free(s.data);
}


static void test_writer_round_trip(void **state)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    ms_frame_reader_t r;
    bytes_t out = {0};
    size_t start[2];
    const char *body;
    size_t len;

    (void)state;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    assert_int_equal(ms_frame_begin(&sb, &start[0]), 0);
    assert_int_equal(start[0], 0);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "op", 2);
    msgpack_pack_str_with_body(&pk, "ping", 4);
    ms_frame_end(&sb, start[0]);

    assert_int_equal(ms_frame_begin(&sb, &start[1]), 0);
    assert_int_equal(start[1], 4 + 9);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    ms_frame_end(&sb, start[1]);

    assert_int_equal(ms_frame_get_len(sb.data), 9);
    assert_int_equal(ms_frame_get_len(sb.data + start[1]), 9);

    ms_frame_reader_init(&r, MS_FRAME_DEFAULT_MAX);
    assert_int_equal(feed(&r, sb.data, sb.size, 5, &out), 2);
    assert_int_equal(out.len, sb.size);
    assert_memory_equal(out.data, sb.data, sb.size);

    /* The bodies are what was packed. */
    assert_int_equal(ms_msgpack_check(out.data + 4, 9, 32, NULL), 0);
    assert_memory_equal(out.data + 4, "\x81\xa2op\xa4ping", 9);
    assert_memory_equal(out.data + 17, "\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
                        9);
    assert_int_equal(ms_frame_reader_next(&r, &body, &len), 0);

    ms_frame_reader_free(&r);
    msgpack_sbuffer_destroy(&sb);
    free(out.data);
}


/* Asserts that msgpack-c unpacks exactly buf[0..len) as one object. */
static void assert_unpacks(const char *buf, size_t len)
{
    msgpack_unpacked u;
    size_t off = 0;

    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, buf, len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, len);
    msgpack_unpacked_destroy(&u);
}


typedef struct sample_s {
    const char *bytes;
    size_t len;
} sample_t;

#define SAMPLE(lit)                                                            \
    {                                                                          \
        lit, sizeof(lit) - 1                                                   \
    }

static const sample_t every_type[] = {
    SAMPLE("\x00"),
    SAMPLE("\x7f"), /* positive fixint */
    SAMPLE("\xe0"),
    SAMPLE("\xff"), /* negative fixint */
    SAMPLE("\x80"),
    SAMPLE("\x81\xa1k\x01"), /* fixmap */
    SAMPLE("\x90"),
    SAMPLE("\x92\x01\xc0"), /* fixarray */
    SAMPLE("\xa0"),
    SAMPLE("\xa3"
           "abc"), /* fixstr */
    SAMPLE("\xc0"),
    SAMPLE("\xc2"),
    SAMPLE("\xc3"), /* nil false true */
    SAMPLE("\xc4\x00"),
    SAMPLE("\xc4\x02xy"),            /* bin 8 */
    SAMPLE("\xc5\x00\x01z"),         /* bin 16 */
    SAMPLE("\xc6\x00\x00\x00\x01z"), /* bin 32 */
    SAMPLE("\xc7\x00\x05"),
    SAMPLE("\xc7\x01\x05z"),                        /* ext 8 */
    SAMPLE("\xc8\x00\x01\xfbz"),                    /* ext 16 */
    SAMPLE("\xc9\x00\x00\x00\x01\x01z"),            /* ext 32 */
    SAMPLE("\xca\x3f\x80\x00\x00"),                 /* float 32 */
    SAMPLE("\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00"), /* float 64 */
    SAMPLE("\xcc\xff"),
    SAMPLE("\xcd\xff\xff"),                         /* uint 8, 16 */
    SAMPLE("\xce\xff\xff\xff\xff"),                 /* uint 32 */
    SAMPLE("\xcf\xff\xff\xff\xff\xff\xff\xff\xff"), /* uint 64 */
    SAMPLE("\xd0\x80"),
    SAMPLE("\xd1\x80\x00"),                         /* int 8, 16 */
    SAMPLE("\xd2\x80\x00\x00\x00"),                 /* int 32 */
    SAMPLE("\xd3\x80\x00\x00\x00\x00\x00\x00\x00"), /* int 64 */
    SAMPLE("\xd4\x01"
           "a"),
    SAMPLE("\xd5\x01"
           "ab"), /* fixext 1, 2 */
    SAMPLE("\xd6\x01"
           "abcd"), /* fixext 4 */
    SAMPLE("\xd7\x01"
           "abcdefgh"), /* fixext 8 */
    SAMPLE("\xd8\x01"
           "abcdefghijklmnop"), /* fixext 16 */
    SAMPLE("\xd9\x00"),
    SAMPLE("\xd9\x02hi"),             /* str 8 */
    SAMPLE("\xda\x00\x02hi"),         /* str 16 */
    SAMPLE("\xdb\x00\x00\x00\x02hi"), /* str 32 */
    SAMPLE("\xdc\x00\x00"),
    SAMPLE("\xdc\x00\x02\x01\x02"),     /* array 16 */
    SAMPLE("\xdd\x00\x00\x00\x01\xc0"), /* array 32 */
    SAMPLE("\xde\x00\x00"),
    SAMPLE("\xde\x00\x01\x01\x02"),         /* map 16 */
    SAMPLE("\xdf\x00\x00\x00\x01\xa0\xc0"), /* map 32 */
};

#define N_EVERY_TYPE (sizeof(every_type) / sizeof(every_type[0]))

static void test_check_every_type(void **state)
{
    ms_error_t err;

    (void)state;
    for (size_t i = 0; i < N_EVERY_TYPE; i++) {
        const sample_t *s = &every_type[i];

        assert_int_equal(ms_msgpack_check(s->bytes, s->len, 32, &err), 0);
        assert_unpacks(s->bytes, s->len);

        /* Every proper prefix is refused. */
        for (size_t n = 0; n < s->len; n++)
            assert_int_equal(ms_msgpack_check(s->bytes, n, 32, &err),
                             MS_EINVAL);
    }
}


/* A map holding every type, nested a few levels. */
static void pack_complex(msgpack_sbuffer *sb)
{
    msgpack_packer pk;

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "scalars", 7);
    msgpack_pack_array(&pk, 20);
    msgpack_pack_nil(&pk);
    msgpack_pack_true(&pk);
    msgpack_pack_false(&pk);
    msgpack_pack_int(&pk, 5);
    msgpack_pack_int(&pk, -5);
    msgpack_pack_fix_uint8(&pk, 200);
    msgpack_pack_fix_uint16(&pk, 60000);
    msgpack_pack_fix_uint32(&pk, 4000000000u);
    msgpack_pack_fix_uint64(&pk, UINT64_MAX);
    msgpack_pack_fix_int8(&pk, -100);
    msgpack_pack_fix_int16(&pk, -30000);
    msgpack_pack_fix_int32(&pk, -2000000000);
    msgpack_pack_fix_int64(&pk, INT64_MIN);
    msgpack_pack_float(&pk, 1.5f);
    msgpack_pack_double(&pk, -2.25);
    msgpack_pack_bin_with_body(&pk, "\x00\x01", 2);
    msgpack_pack_ext_with_body(&pk, "abcd", 4, 7);
    msgpack_pack_ext_with_body(&pk, "abc", 3, -1);
    msgpack_pack_str_with_body(&pk, "", 0);
    msgpack_pack_str_with_body(&pk, "a string longer than thirty-one bytes",
                               37);
    msgpack_pack_str_with_body(&pk, "nested", 6);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "a", 1);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_map(&pk, 0);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_array(&pk, 20);
    for (int i = 0; i < 20; i++)
        msgpack_pack_int(&pk, i * 1000);
    msgpack_pack_nil(&pk);
    msgpack_pack_str_with_body(&pk, "last", 4);
}


static void test_check_every_truncation(void **state)
{
    msgpack_sbuffer sb;
    ms_error_t err;

    (void)state;
    msgpack_sbuffer_init(&sb);
    pack_complex(&sb);

    assert_int_equal(ms_msgpack_check(sb.data, sb.size, 32, &err), 0);
    assert_unpacks(sb.data, sb.size);
    for (size_t n = 0; n < sb.size; n++) {
        err.code = MS_OK;
        assert_int_equal(ms_msgpack_check(sb.data, n, 32, &err), MS_EINVAL);
        assert_int_equal(err.code, MS_EINVAL);
        assert_non_null(strstr(err.msg, "not msgpack"));
    }
    msgpack_sbuffer_destroy(&sb);
}


static void test_check_reserved_byte(void **state)
{
    ms_error_t err;

    (void)state;
    assert_int_equal(ms_msgpack_check("\xc1", 1, 32, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "0xc1"));
    assert_int_equal(ms_msgpack_check("\x92\x01\xc1", 3, 32, &err), MS_EINVAL);
    assert_string_equal(err.msg,
                        "frame is not msgpack: reserved byte 0xc1 at byte 2");
    assert_int_equal(ms_msgpack_check("\x81\xc1\x01", 3, 32, &err), MS_EINVAL);

    /* As a string's content it is just a byte. */
    assert_int_equal(ms_msgpack_check("\xa1\xc1", 2, 32, &err), 0);
}


static void test_check_trailing_bytes(void **state)
{
    msgpack_sbuffer sb;
    ms_error_t err;

    (void)state;
    assert_int_equal(ms_msgpack_check("\x01\x02", 2, 32, &err), MS_EINVAL);
    assert_string_equal(err.msg,
                        "frame is not msgpack: trailing bytes after byte 1");
    assert_int_equal(ms_msgpack_check("\x91\x01\x00", 3, 32, &err), MS_EINVAL);
    assert_int_equal(ms_msgpack_check("\x80\x80", 2, 32, &err), MS_EINVAL);

    msgpack_sbuffer_init(&sb);
    pack_complex(&sb);
    pack_complex(&sb);
    assert_int_equal(ms_msgpack_check(sb.data, sb.size, 32, &err), MS_EINVAL);
    assert_non_null(strstr(err.msg, "trailing"));
    msgpack_sbuffer_destroy(&sb);
}


static void test_check_empty(void **state)
{
    ms_error_t err;

    (void)state;
    assert_int_equal(ms_msgpack_check("", 0, 32, &err), MS_EINVAL);
    assert_int_equal(err.code, MS_EINVAL);
    assert_non_null(strstr(err.msg, "not msgpack"));
}


static void test_check_counts_beyond_bytes(void **state)
{
    /* Each declares more than the bytes after it; a 0xc1 follows, which
     * the check must never reach. */
    static const sample_t bad[] = {
        SAMPLE("\xdc\xff\xff\x01\x02\x03\xc1"),
        SAMPLE("\xdd\xff\xff\xff\xff\x01\xc1"),
        SAMPLE("\xdf\xff\xff\xff\xff\x01\xc1"),
        SAMPLE("\xde\x00\x02\x01\x02\xc1"),
        SAMPLE("\x9f\x01\x02\xc1"),
        SAMPLE("\x92\xdc\x00\x03\x01\x02\xc1"),
    };
    ms_error_t err;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(ms_msgpack_check(bad[i].bytes, bad[i].len, 32, &err),
                         MS_EINVAL);
        assert_non_null(strstr(err.msg, "declares more elements"));
    }

    /* One byte per element is enough; two per map entry. */
    assert_int_equal(ms_msgpack_check("\xdc\x00\x03\x01\x02\x03", 6, 32, &err),
                     0);
    assert_int_equal(
        ms_msgpack_check("\xde\x00\x02\x01\x02\x03\x04", 7, 32, &err), 0);
}


/* Packs depth nested arrays (or maps) around a nil. */
static void pack_nested(msgpack_sbuffer *sb, int depth, int maps)
{
    msgpack_packer pk;

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    for (int i = 0; i < depth; i++) {
        if (maps) {
            msgpack_pack_map(&pk, 1);
            msgpack_pack_str_with_body(&pk, "k", 1);
        } else {
            msgpack_pack_array(&pk, 1);
        }
    }
    msgpack_pack_nil(&pk);
}


static void test_check_depth(void **state)
{
    ms_error_t err;

    (void)state;
    for (int maps = 0; maps <= 1; maps++) {
        msgpack_sbuffer sb;

        msgpack_sbuffer_init(&sb);
        pack_nested(&sb, 32, maps);
        assert_int_equal(ms_msgpack_check(sb.data, sb.size, 32, &err), 0);
        assert_unpacks(sb.data, sb.size);
        assert_int_equal(ms_msgpack_check(sb.data, sb.size, 31, &err),
                         MS_ETOOLARGE);
        assert_string_equal(err.msg, "nesting deeper than 31 levels");
        msgpack_sbuffer_destroy(&sb);

        msgpack_sbuffer_init(&sb);
        pack_nested(&sb, 33, maps);
        assert_int_equal(ms_msgpack_check(sb.data, sb.size, 32, &err),
                         MS_ETOOLARGE);
        assert_int_equal(err.code, MS_ETOOLARGE);
        assert_string_equal(err.msg, "nesting deeper than 32 levels");
        msgpack_sbuffer_destroy(&sb);
    }

    /* Empty containers count; siblings do not add up. */
    assert_int_equal(ms_msgpack_check("\x91\x90", 2, 1, &err), MS_ETOOLARGE);
    assert_int_equal(ms_msgpack_check("\x91\x90", 2, 2, &err), 0);
    assert_int_equal(ms_msgpack_check("\x93\x90\x91\x90\x80", 5, 3, &err), 0);
    assert_int_equal(ms_msgpack_check("\x93\x90\x91\x90\x80", 5, 2, &err),
                     MS_ETOOLARGE);
    assert_int_equal(ms_msgpack_check("\x01", 1, 0, &err), 0);
    assert_int_equal(ms_msgpack_check("\x90", 1, 0, &err), MS_ETOOLARGE);
}


static void test_check_large_inputs(void **state)
{
    size_t n = MS_FRAME_DEFAULT_MAX;
    char *buf = malloc(n);
    ms_error_t err;

    (void)state;
    assert_non_null(buf);

    /* An array of a million nils, then a million nested arrays. */
    memset(buf, 0xc0, n);
    memcpy(buf, "\xdd\x00\x0f\xff\xfb", 5);
    assert_int_equal(ms_msgpack_check(buf, n, 32, &err), 0);
    memset(buf, 0x91, n);
    assert_int_equal(ms_msgpack_check(buf, n, 32, &err), MS_ETOOLARGE);
    assert_int_equal(ms_msgpack_check(buf, n, 1000000, &err), MS_ETOOLARGE);
    free(buf);
}


/* xorshift64: a fixed, portable sequence. */
static uint64_t fuzz_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}


/* Packs a random object whose containers nest at most depth deep. */
static void fuzz_pack(uint64_t *seed, msgpack_packer *pk, int depth)
{
    uint64_t x = fuzz_next(seed);
    uint32_t n = (uint32_t)(x >> 32) % 4;

    switch ((x >> 8) % (depth > 0 ? 12 : 9)) {
    case 0:
        msgpack_pack_nil(pk);
        break;
    case 1:
        msgpack_pack_true(pk);
        break;
    case 2:
        msgpack_pack_int64(pk, (int64_t)fuzz_next(seed) >> (x % 64));
        break;
    case 3:
        msgpack_pack_uint64(pk, fuzz_next(seed) >> (x % 64));
        break;
    case 4:
        msgpack_pack_double(pk, 0.5);
        break;
    case 5:
        msgpack_pack_float(pk, 0.5f);
        break;
    case 6:
        msgpack_pack_str_with_body(pk, "abcdefgh", n * 2);
        break;
    case 7:
        msgpack_pack_bin_with_body(pk, "abcdefgh", n * 2);
        break;
    case 8:
        msgpack_pack_ext_with_body(pk, "abcdefghijklmnop", 1u << n, (int8_t)x);
        break;
    case 9:
    case 10:
        msgpack_pack_array(pk, n);
        for (uint32_t i = 0; i < n; i++)
            fuzz_pack(seed, pk, depth - 1);
        break;
    default:
        msgpack_pack_map(pk, n);
        for (uint32_t i = 0; i < 2 * n; i++)
            fuzz_pack(seed, pk, depth - 1);
        break;
    }
}


/*
 * Fills sb with fuzz input: random bytes, or a random object (sometimes
 * nested past the limit) with a few bytes changed or none.
 */
static void fuzz_input(uint64_t *seed, msgpack_sbuffer *sb)
{
    uint64_t x = fuzz_next(seed);
    msgpack_packer pk;

    msgpack_sbuffer_clear(sb);
    if (x % 4 == 0) {
        size_t len = 1 + (size_t)(x >> 8) % 48;

        for (size_t i = 0; i < len; i++) {
            char c = (char)fuzz_next(seed);

            msgpack_sbuffer_write(sb, &c, 1);
        }
        return;
    }

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (x % 16 == 1)
        pack_nested(sb, 30 + (int)((x >> 8) % 4), (int)(x >> 16) & 1);
    else
        fuzz_pack(seed, &pk, 4);

    for (uint64_t i = 0; i < (x >> 24) % 4; i++) {
        uint64_t y = fuzz_next(seed);

        sb->data[y % sb->size] = (char)(y >> 32);
    }
}


static void test_check_fuzz(void **state)
{
    msgpack_sbuffer sb;
    uint64_t seed = 0x6d657368u;
    int accepted = 0;
    int refused = 0;

    (void)state;
    msgpack_sbuffer_init(&sb);

    for (int i = 0; i < 100000; i++) {
        ms_error_t err;
        int rc;

        fuzz_input(&seed, &sb);
        rc = ms_msgpack_check(sb.data, sb.size, 32, &err);
        if (rc != 0) {
            assert_true(rc == MS_EINVAL || rc == MS_ETOOLARGE);
            assert_int_equal(err.code, rc);
            refused++;
            continue;
        }
        accepted++;
        assert_unpacks(sb.data, sb.size);
    }

    /* The generator must exercise both paths. */
    assert_true(accepted > 20000);
    assert_true(refused > 20000);
    msgpack_sbuffer_destroy(&sb);
}


/*
 * ms_msgpack_map_uint finds a key's unsigned integer without decoding the
 * rest, even past values nested deeper than msgpack-c can decode.
 */
static void test_map_uint(void **state)
{
    /* {"op":"x","deep":[[[...]]] (40 levels), "id":7} */
    unsigned char deep[64];
    size_t n = 0;
    uint64_t v = 0;

    (void)state;
    deep[n++] = 0x83;
    memcpy(deep + n, "\xa2op\xa1x", 5);
    n += 5;
    memcpy(deep + n,
           "\xa4"
           "deep",
           5);
    n += 5;
    for (int i = 0; i < 40; i++)
        deep[n++] = 0x91;
    deep[n++] = 0xc0;
    memcpy(deep + n, "\xa2id\x07", 4);
    n += 4;
    assert_int_equal(ms_msgpack_map_uint((char *)deep, n, "id", &v), 1);
    assert_int_equal(v, 7);
    assert_int_equal(ms_msgpack_map_uint((char *)deep, n, "op", &v), 0);
    assert_int_equal(ms_msgpack_map_uint((char *)deep, n, "nope", &v), 0);

    /* uint 64 and a key that is itself a container. */
    static const unsigned char wide[] = {0x82, 0x91, 0x01, 0x02, 0xa2, 'i',
                                         'd',  0xcf, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff};
    assert_int_equal(
        ms_msgpack_map_uint((const char *)wide, sizeof(wide), "id", &v), 1);
    assert_true(v == UINT64_MAX);

    /* Not a map, a negative id, truncation, and an empty buffer. */
    assert_int_equal(ms_msgpack_map_uint("\x91\x01", 2, "id", &v), 0);
    assert_int_equal(ms_msgpack_map_uint("\x81\xa2id\xff", 5, "id", &v), 0);
    assert_int_equal(ms_msgpack_map_uint("\x81\xa2id", 4, "id", &v), 0);
    assert_int_equal(ms_msgpack_map_uint("\x81\xa2id\xcd\x01", 6, "id", &v), 0);
    assert_int_equal(ms_msgpack_map_uint("", 0, "id", &v), 0);

    /* A map declaring more entries than it holds ends the search. */
    assert_int_equal(
        ms_msgpack_map_uint("\xdf\xff\xff\xff\xff\xa1x\x01", 8, "id", &v), 0);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader_split_everywhere),
        cmocka_unit_test(test_reader_byte_by_byte),
        cmocka_unit_test(test_reader_many_in_one_read),
        cmocka_unit_test(test_reader_empty_frame),
        cmocka_unit_test(test_reader_huge_declared_length),
        cmocka_unit_test(test_reader_exact_limit),
        cmocka_unit_test(test_reader_default_limit),
        cmocka_unit_test(test_reader_offers_rest_of_frame),
        cmocka_unit_test(test_reader_small_limit),
        cmocka_unit_test(test_reader_no_growth),
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_check_every_type),
        cmocka_unit_test(test_check_every_truncation),
        cmocka_unit_test(test_check_reserved_byte),
        cmocka_unit_test(test_check_trailing_bytes),
        cmocka_unit_test(test_check_empty),
        cmocka_unit_test(test_check_counts_beyond_bytes),
        cmocka_unit_test(test_check_depth),
        cmocka_unit_test(test_check_large_inputs),
        cmocka_unit_test(test_check_fuzz),
        cmocka_unit_test(test_map_uint),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
