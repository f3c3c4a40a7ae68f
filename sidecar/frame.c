/*
 * frame.c - the wire framing: the stream reader that cuts a byte stream
 * into length-prefixed frames, the frame writer over a msgpack_sbuffer,
 * and ms_msgpack_check(), the validator run on a body before msgpack-c
 * unpacks it.
 *
 * Entry points: ms_frame_reader_*, ms_frame_begin/end, ms_frame_get_len,
 * ms_msgpack_check. No global state; a reader belongs to one thread (the
 * daemon's loop thread, or the client library's caller). Linked into the
 * client library: never aborts, never logs, reports MS_ENOMEM.
 */
#include "frame.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Room for this many bytes is offered to reads, so small frames batch up. */
#define FRAME_READ_CHUNK (64 * 1024)

/*
 * The validator's explicit stack. msgpack-c's unpacker holds at most 32
 * open containers, so nothing deeper could be unpacked anyway; a larger
 * max_depth acts as this one.
 */
#define CHECK_DEPTH_MAX 64

uint32_t ms_frame_get_len(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;

    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 |
           (uint32_t)u[3];
}


void ms_frame_reader_init(ms_frame_reader_t *r, size_t max_frame)
{
    /* No body can be longer than its 32-bit length field says. */
    if (max_frame > UINT32_MAX)
        max_frame = UINT32_MAX;
    if (max_frame > SIZE_MAX - MS_FRAME_HEADER)
        max_frame = SIZE_MAX - MS_FRAME_HEADER;

    r->buf = NULL;
    r->start = 0;
    r->len = 0;
    r->cap = 0;
    r->max_frame = max_frame;
}


void ms_frame_reader_free(ms_frame_reader_t *r)
{
    free(r->buf);
    r->buf = NULL;
    r->start = 0;
    r->len = 0;
    r->cap = 0;
}


/*
 * Bytes the frame at start needs in all, header included: just the header
 * while it is incomplete or declares too much (next() reports that).
 */
static size_t reader_frame_size(const ms_frame_reader_t *r)
{
    uint32_t body;

    if (r->len < MS_FRAME_HEADER)
        return MS_FRAME_HEADER;
    body = ms_frame_get_len(r->buf + r->start);
    if (body > r->max_frame)
        return MS_FRAME_HEADER;
    return MS_FRAME_HEADER + (size_t)body;
}


/*
 * How much room the next read should get: enough for the rest of the
 * current frame, and a whole chunk of bytes buffered in all so that small
 * frames batch up, never past the limit; below the limit, at least a byte.
 */
static size_t reader_want(const ms_frame_reader_t *r)
{
    size_t limit = r->max_frame + MS_FRAME_HEADER;
    size_t total = reader_frame_size(r);

    if (total < FRAME_READ_CHUNK)
        total = FRAME_READ_CHUNK;
    if (total > limit)
        total = limit;

    if (total > r->len)
        return total - r->len;
    return r->len < limit ? 1 : 0;
}


static int reader_grow(ms_frame_reader_t *r, size_t need)
{
    size_t limit = r->max_frame + MS_FRAME_HEADER;
    size_t cap = r->cap;
    char *buf;

    /* Doubling keeps a buffer that is short by a few bytes from creeping. */
    if (cap <= limit / 2 && cap * 2 > need)
        need = cap * 2;
    if (need > limit)
        need = limit;

    buf = realloc(r->buf, need);
    if (buf == NULL)
        return MS_ENOMEM;
    r->buf = buf;
    r->cap = need;
    return 0;
}


int ms_frame_reader_space(ms_frame_reader_t *r, size_t suggested, char **base,
                          size_t *len)
{
    size_t want;

    /* The room a read gets depends on frames, not on libuv's hint. */
    (void)suggested;

    if (r->len == 0)
        r->start = 0;
    want = reader_want(r);

    /* Reclaim consumed bytes before asking for more memory. */
    if (r->start > 0 && r->cap - r->start - r->len < want) {
        memmove(r->buf, r->buf + r->start, r->len);
        r->start = 0;
    }

    if (r->cap - r->len < want && reader_grow(r, r->len + want) != 0) {
        *base = NULL;
        *len = 0;
        return MS_ENOMEM;
    }

    *base = r->buf + r->start + r->len;
    *len = r->cap - r->start - r->len;
    return 0;
}


void ms_frame_reader_commit(ms_frame_reader_t *r, size_t n)
{
    assert(n <= r->cap - r->start - r->len);
    r->len += n;
}


int ms_frame_reader_next(ms_frame_reader_t *r, const char **body, size_t *len)
{
    uint32_t n;

    if (r->len < MS_FRAME_HEADER)
        return 0;

    n = ms_frame_get_len(r->buf + r->start);
    if (n > r->max_frame)
        return MS_ETOOLARGE;
    if (r->len - MS_FRAME_HEADER < n)
        return 0;

    *body = r->buf + r->start + MS_FRAME_HEADER;
    *len = n;
    r->start += MS_FRAME_HEADER + (size_t)n;
    r->len -= MS_FRAME_HEADER + (size_t)n;
    return 1;
}


int ms_frame_begin(msgpack_sbuffer *sb, size_t *start)
{
    static const char header[MS_FRAME_HEADER];

    *start = sb->size;
    if (msgpack_sbuffer_write(sb, header, sizeof(header)) != 0)
        return MS_ENOMEM;
    return 0;
}


void ms_frame_end(msgpack_sbuffer *sb, size_t start)
{
    unsigned char *p = (unsigned char *)sb->data + start;
    size_t body;

    assert(start + MS_FRAME_HEADER <= sb->size);
    body = sb->size - start - MS_FRAME_HEADER;
    assert(body <= UINT32_MAX);

    p[0] = (unsigned char)(body >> 24);
    p[1] = (unsigned char)(body >> 16);
    p[2] = (unsigned char)(body >> 8);
    p[3] = (unsigned char)body;
}


/*
 * The head of one msgpack object: its type byte, the length field, and
 * for scalars the payload too.
 */
typedef struct check_head_s {
    size_t size;    /* bytes of the head (a scalar's whole encoding) */
    uint64_t count; /* objects a container holds (a map: keys + values) */
    bool container;
    const char *kind; /* "array" or "map", for messages */
} check_head_t;

enum { HEAD_OK, HEAD_TRUNCATED, HEAD_RESERVED };

static uint64_t check_be(const unsigned char *p, size_t width)
{
    uint64_t v = 0;

    for (size_t i = 0; i < width; i++)
        v = v << 8 | p[i];
    return v;
}


/*
 * A head whose size is a length field of width bytes (after extra fixed
 * bytes: ext's type) plus the payload that field announces.
 */
static int check_sized(const unsigned char *p, size_t avail, size_t width,
                       size_t extra, check_head_t *h)
{
    size_t fixed = 1 + width + extra;
    uint64_t payload;

    if (avail < fixed)
        return HEAD_TRUNCATED;
    payload = check_be(p + 1, width);
    if (payload > avail - fixed)
        return HEAD_TRUNCATED;
    h->size = fixed + (size_t)payload;
    return HEAD_OK;
}


static int check_container(const unsigned char *p, size_t avail, size_t width,
                           bool map, check_head_t *h)
{
    uint64_t n;

    if (avail < 1 + width)
        return HEAD_TRUNCATED;
    n = width ? check_be(p + 1, width) : (uint64_t)(p[0] & 0x0f);
    h->size = 1 + width;
    h->count = map ? 2 * n : n;
    h->container = true;
    h->kind = map ? "map" : "array";
    return HEAD_OK;
}


static int check_fixed(size_t size, size_t avail, check_head_t *h)
{
    if (avail < size)
        return HEAD_TRUNCATED;
    h->size = size;
    return HEAD_OK;
}


/* Decodes the head at p, which has avail > 0 bytes after it. */
static int check_head(const unsigned char *p, size_t avail, check_head_t *h)
{
    unsigned char b = p[0];

    h->count = 0;
    h->container = false;
    h->kind = NULL;

    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return check_fixed(1, avail, h);
    if (b <= 0x8f)
        return check_container(p, avail, 0, true, h);
    if (b <= 0x9f)
        return check_container(p, avail, 0, false, h);
    if (b <= 0xbf)
        return check_fixed(1 + (size_t)(b & 0x1f), avail, h);

    switch (b) {
    case 0xc4:
    case 0xc5:
    case 0xc6: /* bin 8/16/32 */
        return check_sized(p, avail, (size_t)1 << (b - 0xc4), 0, h);
    case 0xc7:
    case 0xc8:
    case 0xc9: /* ext 8/16/32 */
        return check_sized(p, avail, (size_t)1 << (b - 0xc7), 1, h);
    case 0xca: /* float 32 */
        return check_fixed(5, avail, h);
    case 0xcb: /* float 64 */
        return check_fixed(9, avail, h);
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: /* uint 8..64 */
        return check_fixed(1 + ((size_t)1 << (b - 0xcc)), avail, h);
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: /* int 8..64 */
        return check_fixed(1 + ((size_t)1 << (b - 0xd0)), avail, h);
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: /* fixext */
        return check_fixed(2 + ((size_t)1 << (b - 0xd4)), avail, h);
    case 0xd9:
    case 0xda:
    case 0xdb: /* str 8/16/32 */
        return check_sized(p, avail, (size_t)1 << (b - 0xd9), 0, h);
    case 0xdc:
    case 0xdd: /* array 16/32 */
        return check_container(p, avail, (size_t)2 << (b - 0xdc), false, h);
    case 0xde:
    case 0xdf: /* map 16/32 */
        return check_container(p, avail, (size_t)2 << (b - 0xde), true, h);
    default: /* 0xc1, never used */
        return HEAD_RESERVED;
    }
}


static int check_head_error(int rc, size_t pos, ms_error_t *err)
{
    if (rc == HEAD_RESERVED)
        return ms_error_set(err, MS_EINVAL,
                            "frame is not msgpack: reserved byte 0xc1 "
                            "at byte %zu",
                            pos);
    return ms_error_set(err, MS_EINVAL,
                        "frame is not msgpack: truncated at byte %zu", pos);
}


/*
 * One pass over the bytes. todo counts the objects announced but not yet
 * begun; each needs at least one byte, which refuses a huge declared count
 * at once. stack[i] counts the objects container i still has to finish,
 * which is only needed to know the depth.
 */
int ms_msgpack_check(const char *buf, size_t len, int max_depth,
                     ms_error_t *err)
{
    const unsigned char *p = (const unsigned char *)buf;
    uint64_t stack[CHECK_DEPTH_MAX];
    int depth = 0;
    uint64_t todo = 1;
    size_t pos = 0;

    if (max_depth > CHECK_DEPTH_MAX)
        max_depth = CHECK_DEPTH_MAX;
    if (len == 0)
        return ms_error_set(err, MS_EINVAL, "frame is not msgpack: empty");

    while (todo > 0) {
        check_head_t h;
        size_t at = pos;
        int rc;

        if (pos == len)
            return check_head_error(HEAD_TRUNCATED, pos, err);
        rc = check_head(p + pos, len - pos, &h);
        if (rc != HEAD_OK)
            return check_head_error(rc, pos, err);
        pos += h.size;
        todo--;
        if (todo > len - pos)
            return check_head_error(HEAD_TRUNCATED, len, err);

        if (h.container) {
            if (h.count > len - pos - todo)
                return ms_error_set(err, MS_EINVAL,
                                    "frame is not msgpack: %s at byte %zu "
                                    "declares more elements than the "
                                    "frame holds",
                                    h.kind, at);
            if (depth >= max_depth)
                return ms_error_set(err, MS_ETOOLARGE,
                                    "nesting deeper than %d levels", max_depth);
            todo += h.count;
            if (h.count > 0) {
                stack[depth++] = h.count;
                continue;
            }
        }

        /* An object ended: close every container it was the last of. */
        while (depth > 0 && --stack[depth - 1] == 0)
            depth--;
    }

    if (pos != len)
        return ms_error_set(err, MS_EINVAL,
                            "frame is not msgpack: trailing bytes after "
                            "byte %zu",
                            pos);
    return 0;
}


/* Steps over one whole object at *pos; 0, or -1 when malformed. */
static int skip_object(const unsigned char *p, size_t len, size_t *pos)
{
    uint64_t todo = 1;

    while (todo > 0) {
        check_head_t h;

        if (*pos >= len || check_head(p + *pos, len - *pos, &h) != HEAD_OK)
            return -1;
        *pos += h.size;
        todo += h.count - 1;
        if (todo > len - *pos)
            return -1;
    }
    return 0;
}


/* The string at p (a head of h), or NULL when it is not a string. */
static const unsigned char *str_body(const unsigned char *p,
                                     const check_head_t *h, size_t *n)
{
    size_t width =
        p[0] >= 0xd9 && p[0] <= 0xdb ? (size_t)1 << (p[0] - 0xd9) : 0;

    if (!((p[0] >= 0xa0 && p[0] <= 0xbf) || width > 0))
        return NULL;
    *n = h->size - 1 - width;
    return p + 1 + width;
}


/* An unsigned integer at p: positive fixint or uint 8..64. */
static int read_uint(const unsigned char *p, size_t avail, uint64_t *out)
{
    if (p[0] <= 0x7f) {
        *out = p[0];
        return 1;
    }
    if (p[0] >= 0xcc && p[0] <= 0xcf &&
        avail >= 1 + ((size_t)1 << (p[0] - 0xcc))) {
        *out = check_be(p + 1, (size_t)1 << (p[0] - 0xcc));
        return 1;
    }
    return 0;
}


int ms_msgpack_map_uint(const char *buf, size_t len, const char *key,
                        uint64_t *out)
{
    const unsigned char *p = (const unsigned char *)buf;
    size_t klen = strlen(key), pos = 0;
    check_head_t h;

    if (len == 0 || check_head(p, len, &h) != HEAD_OK || !h.container ||
        strcmp(h.kind, "map") != 0)
        return 0;
    pos = h.size;
    for (uint64_t i = 0; i < h.count / 2; i++) {
        check_head_t k;
        const unsigned char *s;
        size_t n;

        if (pos >= len || check_head(p + pos, len - pos, &k) != HEAD_OK)
            return 0;
        s = k.container ? NULL : str_body(p + pos, &k, &n);
        if (s != NULL && n == klen && memcmp(s, key, n) == 0) {
            pos += k.size;
            return pos < len ? read_uint(p + pos, len - pos, out) : 0;
        }
        if (skip_object(p, len, &pos) < 0 || skip_object(p, len, &pos) < 0)
            return 0;
    }
    return 0;
}
