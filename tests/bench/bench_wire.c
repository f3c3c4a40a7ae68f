/*
 * bench_wire.c - meshsync-bench's client connections and reply reading
 * (see bench_wire.h). Entry points: bench_conn_unix(), bench_conn_tcp(),
 * bench_conn_send(), bench_conn_fill(), bench_conn_next(),
 * bench_wire_scan(). Bench process, single-threaded.
 *
 * Nothing here allocates once a connection is open, except when a reply
 * is larger than any before it: the timed loops stay allocation-free.
 */
#define _GNU_SOURCE
#include "bench_wire.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench_proc.h"
#include "error.h"

#define FRAME_BUF_INIT  (256u * 1024)
#define RESP_STR_INIT   (64u * 1024)
#define RESP_CHUNK      (64u * 1024)
#define MP_DEPTH_MAX    64
#define RECV_TRIES_MAX  (1u << 20)
#define EINTR_TRIES_MAX 64

/* --- msgpack, read in place ------------------------------------------- */

typedef struct mp_s {
    const unsigned char *p;
    size_t n;
    size_t off;
} mp_t;


static bool mp_has(const mp_t *m, uint64_t k)
{
    return m->n - m->off >= k;
}


/* A big-endian unsigned integer of k bytes at the cursor, consumed. */
static uint64_t mp_be(mp_t *m, unsigned k)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < k; i++)
        v = v << 8 | m->p[m->off + i];
    m->off += k;
    return v;
}


/* Sizes of the fixed-length types, indexed by first byte - 0xc0. */
static const signed char fixed_len[32] = {
    [0x0a] = 4, [0x0b] = 8, [0x0c] = 1, [0x0d] = 2, [0x0e] = 4,
    [0x0f] = 8, [0x10] = 1, [0x11] = 2, [0x12] = 4, [0x13] = 8,
    [0x14] = 2, [0x15] = 3, [0x16] = 5, [0x17] = 9, [0x18] = 17};

/*
 * Consumes an object's header: *items is how many objects follow inside
 * it (2 per map pair), *bytes how many payload bytes.
 */
static int mp_head(mp_t *m, uint64_t *items, uint64_t *bytes)
{
    unsigned char b = m->p[m->off++];
    unsigned k;

    *items = 0;
    *bytes = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return 0;
    if (b >= 0x80 && b <= 0x9f) {
        *items = (b & 0x0f) * (b <= 0x8f ? 2u : 1u);
        return 0;
    }
    if (b >= 0xa0 && b <= 0xbf) {
        *bytes = b & 0x1f;
        return 0;
    }
    if (fixed_len[b - 0xc0] > 0) {
        *bytes = (uint64_t)fixed_len[b - 0xc0];
        return 0;
    }

    /* The rest carry a length field of 1, 2 or 4 bytes. */
    switch (b) {
    case 0xc4:
    case 0xc7:
    case 0xd9:
        k = 1;
        break;
    case 0xc5:
    case 0xc8:
    case 0xda:
    case 0xdc:
    case 0xde:
        k = 2;
        break;
    case 0xc6:
    case 0xc9:
    case 0xdb:
    case 0xdd:
    case 0xdf:
        k = 4;
        break;
    default:
        return MS_EPROTO;
    }
    if (!mp_has(m, k))
        return MS_EPROTO;
    if (b >= 0xdc)
        *items = mp_be(m, k) * (b >= 0xde ? 2u : 1u);
    else
        *bytes = mp_be(m, k) + (b >= 0xc7 && b <= 0xc9 ? 1u : 0u);
    return 0;
}


/* Every child takes a byte at least, so the loop ends with the buffer. */
static int mp_skip(mp_t *m, unsigned depth)
{
    uint64_t items, bytes;

    if (depth > MP_DEPTH_MAX || !mp_has(m, 1) || mp_head(m, &items, &bytes) < 0)
        return MS_EPROTO;
    if (!mp_has(m, bytes))
        return MS_EPROTO;
    m->off += bytes;
    for (uint64_t i = 0; i < items; i++) {
        if (mp_skip(m, depth + 1) < 0)
            return MS_EPROTO;
    }
    return 0;
}


static int mp_str(mp_t *m, const char **s, size_t *len)
{
    unsigned char b;
    unsigned k;

    if (!mp_has(m, 1))
        return MS_EPROTO;
    b = m->p[m->off];
    if (b >= 0xa0 && b <= 0xbf) {
        m->off++;
        *len = b & 0x1f;
    } else if (b >= 0xd9 && b <= 0xdb) {
        k = b == 0xd9 ? 1 : b == 0xda ? 2 : 4;
        m->off++;
        if (!mp_has(m, k))
            return MS_EPROTO;
        *len = (size_t)mp_be(m, k);
    } else {
        return MS_EPROTO;
    }
    if (!mp_has(m, *len))
        return MS_EPROTO;
    *s = (const char *)m->p + m->off;
    m->off += *len;
    return 0;
}


/* An unsigned integer: 1 with *v, 0 (skipped) for any other object. */
static int mp_uint(mp_t *m, uint64_t *v)
{
    unsigned char b;

    if (!mp_has(m, 1))
        return MS_EPROTO;
    b = m->p[m->off];
    if (b <= 0x7f) {
        m->off++;
        *v = b;
        return 1;
    }
    if (b >= 0xcc && b <= 0xcf) {
        unsigned k = 1u << (b - 0xcc);

        m->off++;
        if (!mp_has(m, k))
            return MS_EPROTO;
        *v = mp_be(m, k);
        return 1;
    }
    return mp_skip(m, 0);
}


/* A boolean: 1 for true, 0 for false or anything else (skipped). */
static int mp_bool(mp_t *m)
{
    if (!mp_has(m, 1))
        return MS_EPROTO;
    if (m->p[m->off] == 0xc3 || m->p[m->off] == 0xc2)
        return m->p[m->off++] == 0xc3;
    return mp_skip(m, 0) < 0 ? MS_EPROTO : 0;
}


static bool key_is(const char *k, size_t len, const char *want)
{
    size_t n = strlen(want);

    return len == n && memcmp(k, want, n) == 0;
}


/* One pair of the top-level map: the value of a key the bench reads. */
static int scan_pair(mp_t *m, bench_msg_t *msg, bool *stop, bool all)
{
    const char *k;
    size_t len;
    int rc;

    if (mp_str(m, &k, &len) < 0)
        return MS_EPROTO;
    if (key_is(k, len, "ok")) {
        if ((rc = mp_bool(m)) < 0)
            return rc;
        msg->ok = rc == 1;
        *stop = !all;
        return 0;
    }
    if (key_is(k, len, "version")) {
        if ((rc = mp_uint(m, &msg->version)) < 0)
            return rc;
        msg->has_version = rc == 1;
        return 0;
    }
    if (key_is(k, len, "ready")) {
        if ((rc = mp_bool(m)) < 0)
            return rc;
        msg->ready = rc;
        return 0;
    }
    if (key_is(k, len, "push")) {
        msg->push = true;
        if (mp_str(m, &k, &len) < 0)
            return MS_EPROTO;
        msg->reset = key_is(k, len, "reset");
        return 0;
    }
    return mp_skip(m, 1);
}


int bench_wire_scan(const char *body, size_t len, bool all, bench_msg_t *msg)
{
    mp_t m = {(const unsigned char *)body, len, 0};
    uint64_t items, bytes;
    bool stop = false;

    *msg = (bench_msg_t){.ready = -1, .body = body, .len = len};
    if (len == 0 ||
        !((m.p[0] & 0xf0) == 0x80 || m.p[0] == 0xde || m.p[0] == 0xdf))
        return MS_EPROTO;
    if (mp_head(&m, &items, &bytes) < 0 || bytes != 0)
        return MS_EPROTO;
    for (uint64_t i = 0; i < items / 2 && !stop; i++) {
        if (scan_pair(&m, msg, &stop, all) < 0)
            return MS_EPROTO;
    }
    return stop || m.off == len ? 0 : MS_EPROTO;
}


/* --- RESP through redisReader, without reply objects ------------------ */

/*
 * The reader's object functions fill the connection's bench_resp_t
 * instead of allocating redisReply trees: every "object" is that struct.
 * Only the root and the root array's elements are recorded.
 */
static void resp_reset(bench_resp_t *r, int type)
{
    r->type = type;
    r->elements = 0;
    memset(r->ints, 0, sizeof(r->ints));
    r->tag[0] = '\0';
    r->str_len = 0;
    r->str_set = false;
}


static bool task_is_root(const redisReadTask *t)
{
    return t->parent == NULL;
}


static bool task_in_root(const redisReadTask *t)
{
    return t->parent != NULL && t->parent->parent == NULL;
}


static void *resp_string(const redisReadTask *t, char *s, size_t len)
{
    bench_resp_t *r = t->privdata;

    if (task_is_root(t))
        resp_reset(r, t->type);
    if (task_in_root(t) && t->idx == 0) {
        size_t n = len < sizeof(r->tag) - 1 ? len : sizeof(r->tag) - 1;

        memcpy(r->tag, s, n);
        r->tag[n] = '\0';
    }
    if (!task_is_root(t) && !(task_in_root(t) && t->idx == 2))
        return r;

    /* Only a reply larger than any before it grows the buffer. */
    if (len > r->str_cap) {
        char *p = realloc(r->str, len);

        if (p == NULL)
            return NULL;
        r->str = p;
        r->str_cap = len;
    }
    memcpy(r->str, s, len);
    r->str_len = len;
    r->str_set = true;
    return r;
}


static void *resp_array(const redisReadTask *t, int elements)
{
    bench_resp_t *r = t->privdata;

    if (task_is_root(t)) {
        resp_reset(r, REDIS_REPLY_ARRAY);
        r->elements = elements;
    }
    return r;
}


static void *resp_integer(const redisReadTask *t, long long v)
{
    bench_resp_t *r = t->privdata;

    if (task_is_root(t)) {
        resp_reset(r, REDIS_REPLY_INTEGER);
        r->ints[0] = v;
    } else if (task_in_root(t) && t->idx >= 0 && t->idx < 4) {
        r->ints[t->idx] = v;
    }
    return r;
}


static void *resp_nil(const redisReadTask *t)
{
    bench_resp_t *r = t->privdata;

    if (task_is_root(t))
        resp_reset(r, REDIS_REPLY_NIL);
    return r;
}


static void resp_free(void *obj)
{
    (void)obj;
}


static redisReplyObjectFunctions resp_functions = {
    resp_string, resp_array, resp_integer, resp_nil, resp_free};

/*
 * A write.lua reply {1, version} is ok with its version; {0, ...} is a
 * refused write. An error reply is never ok.
 */
static void resp_to_msg(const bench_resp_t *r, bench_msg_t *m)
{
    *m = (bench_msg_t){.ok = r->type != REDIS_REPLY_ERROR, .ready = -1};
    if (r->str_set) {
        m->body = r->str;
        m->len = r->str_len;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->tag[0] == '\0' && r->elements >= 2) {
        m->ok = r->ints[0] == 1;
        m->has_version = m->ok;
        m->version = (uint64_t)r->ints[1];
    }
}


/* --- connections ------------------------------------------------------ */

static int conn_setup(bench_conn_t *c, int fd, bench_wire_t wire)
{
    struct timeval tv = {BENCH_WIRE_TIMEOUT_MS / 1000, 0};

    *c = (bench_conn_t){.fd = fd, .wire = wire};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (wire == BENCH_WIRE_FRAME) {
        c->cap = FRAME_BUF_INIT;
        c->buf = malloc(c->cap);
        if (c->buf == NULL)
            goto failed_alloc;
        return 0;
    }

    c->reader = redisReaderCreateWithFunctions(&resp_functions);
    c->resp.str = malloc(RESP_STR_INIT);
    if (c->reader == NULL || c->resp.str == NULL)
        goto failed_alloc;
    c->resp.str_cap = RESP_STR_INIT;
    c->reader->privdata = &c->resp;
    /* Keep the reader's buffer between replies rather than free it. */
    c->reader->maxbuf = 0;
    return 0;

failed_alloc:
    bench_conn_close(c);
    return MS_ENOMEM;
}


int bench_conn_unix(bench_conn_t *c, const char *path, bench_wire_t wire)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd;

    *c = (bench_conn_t){.fd = -1};
    if (strlen(path) >= sizeof(sa.sun_path))
        return MS_EINVAL;
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return MS_EIO;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;

        close(fd);
        errno = e;
        return MS_EIO;
    }
    return conn_setup(c, fd, wire);
}


int bench_conn_tcp(bench_conn_t *c, int port, bench_wire_t wire)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    int fd;

    *c = (bench_conn_t){.fd = -1};
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return MS_EIO;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return MS_EIO;
    }
    /* Requests are single small writes: Nagle would only delay them. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return conn_setup(c, fd, wire);
}


void bench_conn_close(bench_conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    if (c->reader != NULL)
        redisReaderFree(c->reader);
    free(c->buf);
    free(c->resp.str);
    *c = (bench_conn_t){.fd = -1};
}


/* EINTR: go on unless the bench is being stopped. */
static bool retry_eintr(unsigned *tries)
{
    return errno == EINTR && !bench_proc_interrupted() &&
           ++*tries < EINTR_TRIES_MAX;
}


int bench_conn_sendv(bench_conn_t *c, struct iovec *iov, int n)
{
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    unsigned eintr = 0;

    while (mh.msg_iovlen > 0) {
        ssize_t k = sendmsg(c->fd, &mh, MSG_NOSIGNAL);

        if (k < 0 && retry_eintr(&eintr))
            continue;
        if (k < 0)
            return errno == EAGAIN ? MS_ETIMEOUT : MS_EIO;

        /* Past what went out: whole iovecs, then part of one. */
        while (mh.msg_iovlen > 0 && (size_t)k >= mh.msg_iov->iov_len) {
            k -= (ssize_t)mh.msg_iov->iov_len;
            mh.msg_iov++;
            mh.msg_iovlen--;
        }
        if (mh.msg_iovlen > 0) {
            mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + k;
            mh.msg_iov->iov_len -= (size_t)k;
        }
    }
    return 0;
}


int bench_conn_send(bench_conn_t *c, const void *p, size_t n)
{
    struct iovec iov = {(void *)p, n};

    return bench_conn_sendv(c, &iov, 1);
}


/* Room for the next read: move what is left to the front, or grow. */
static int frame_room(bench_conn_t *c, size_t want)
{
    char *p;

    if (c->start > 0 && c->cap - c->end < want) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (c->cap - c->end >= want)
        return 0;
    p = realloc(c->buf, c->end + want);
    if (p == NULL)
        return MS_ENOMEM;
    c->buf = p;
    c->cap = c->end + want;
    return 0;
}


static ssize_t recv_some(bench_conn_t *c, char *p, size_t n, bool nonblock)
{
    unsigned eintr = 0;
    ssize_t k;

    do {
        k = recv(c->fd, p, n, nonblock ? MSG_DONTWAIT : 0);
    } while (k < 0 && retry_eintr(&eintr));
    if (k > 0)
        return k;
    if (k == 0)
        return MS_EIO;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return nonblock ? 0 : MS_ETIMEOUT;
    return MS_EIO;
}


int bench_conn_fill(bench_conn_t *c, bool nonblock)
{
    char chunk[RESP_CHUNK];
    ssize_t k;

    if (c->wire == BENCH_WIRE_FRAME) {
        if (frame_room(c, 4096) < 0)
            return MS_ENOMEM;
        k = recv_some(c, c->buf + c->end, c->cap - c->end, nonblock);
        if (k > 0)
            c->end += (size_t)k;
        return (int)k;
    }
    k = recv_some(c, chunk, sizeof(chunk), nonblock);
    if (k > 0 && redisReaderFeed(c->reader, chunk, (size_t)k) != REDIS_OK)
        return MS_ENOMEM;
    return (int)k;
}


static int frame_next(bench_conn_t *c, bench_msg_t *m)
{
    size_t have = c->end - c->start;
    const unsigned char *h = (const unsigned char *)c->buf + c->start;
    size_t n;

    if (have < 4)
        return 0;
    n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
    if (n > BENCH_WIRE_MAX)
        return MS_EPROTO;
    if (have < 4 + n)
        return frame_room(c, 4 + n - have) < 0 ? MS_ENOMEM : 0;
    if (bench_wire_scan(c->buf + c->start + 4, n, c->scan_all, m) < 0)
        return MS_EPROTO;
    c->start += 4 + n;
    if (c->start == c->end)
        c->start = c->end = 0;
    return 1;
}


int bench_conn_next(bench_conn_t *c, bench_msg_t *m)
{
    void *obj = NULL;

    if (c->wire == BENCH_WIRE_FRAME)
        return frame_next(c, m);
    if (redisReaderGetReply(c->reader, &obj) != REDIS_OK)
        return MS_EPROTO;
    if (obj == NULL)
        return 0;
    resp_to_msg(&c->resp, m);
    return 1;
}


int bench_conn_recv(bench_conn_t *c, bench_msg_t *m)
{
    for (unsigned i = 0; i < RECV_TRIES_MAX; i++) {
        int rc = bench_conn_next(c, m);

        if (rc != 0)
            return rc < 0 ? rc : 0;
        rc = bench_conn_fill(c, false);
        if (rc < 0)
            return rc;
    }
    return MS_EPROTO;
}


int bench_conn_wait(bench_conn_t *c, int timeout_ms)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int rc = poll(&p, 1, timeout_ms);

    if (rc < 0)
        return errno == EINTR && !bench_proc_interrupted() ? 0 : MS_EIO;
    return rc > 0 ? 1 : 0;
}
