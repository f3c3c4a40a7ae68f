/*
 * bench_echo.c - the echo server of baseline A (see bench_echo.h). Entry
 * point: bench_echo_run(). Runs in the forked echo child, on its own
 * libuv loop, single-threaded.
 *
 * Each client's bytes collect in one buffer; complete frames are counted
 * and dropped, and the replies to all of them leave in one uv_write per
 * read callback, the way a server batches the replies of one loop turn.
 */
#include "bench_echo.h"

#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "error.h"

#define READ_ROOM (64u * 1024)
#define FRAME_MAX (4u * 1024 * 1024)

typedef struct echo_s {
    uv_loop_t loop;
    uv_pipe_t server;
    char *reply; /* one framed reply */
    size_t reply_len;
} echo_t;

typedef struct echo_client_s {
    uv_pipe_t pipe;
    echo_t *echo;
    char *in;
    size_t in_len;
    size_t in_cap;
} echo_client_t;

typedef struct echo_write_s {
    uv_write_t req;
    char data[]; /* the replies */
} echo_write_t;

/* The length of a msgpack str header for a string of n bytes. */
static size_t str_header(size_t n)
{
    return n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5;
}


/* {id: 0, ok: true, pad: "..."} of exactly size bytes, framed. */
static int build_reply(echo_t *e, size_t size)
{
    static const size_t fixed = 1 + 3 + 1 + 3 + 1 + 4;
    static const size_t headers[] = {1, 2, 3, 5};
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t pad = SIZE_MAX;

    for (size_t i = 0; i < 4; i++) {
        if (size >= fixed + headers[i] &&
            str_header(size - fixed - headers[i]) == headers[i])
            pad = size - fixed - headers[i];
    }
    if (pad == SIZE_MAX)
        return MS_EINVAL;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_str_with_body(&pk, "ok", 2);
    msgpack_pack_true(&pk);
    msgpack_pack_str_with_body(&pk, "pad", 3);
    msgpack_pack_str(&pk, pad);
    for (size_t i = 0; i < pad; i++)
        msgpack_pack_str_body(&pk, "x", 1);

    e->reply_len = sb.size + 4;
    e->reply = malloc(e->reply_len);
    if (e->reply == NULL || sb.size != size) {
        msgpack_sbuffer_destroy(&sb);
        return MS_EINTERNAL;
    }
    e->reply[0] = (char)(size >> 24);
    e->reply[1] = (char)(size >> 16);
    e->reply[2] = (char)(size >> 8);
    e->reply[3] = (char)size;
    memcpy(e->reply + 4, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}


static void on_client_closed(uv_handle_t *h)
{
    echo_client_t *c = h->data;

    free(c->in);
    free(c);
}


static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    echo_client_t *c = h->data;

    (void)suggested;
    if (c->in_cap - c->in_len < READ_ROOM) {
        char *p = realloc(c->in, c->in_len + READ_ROOM);

        if (p == NULL) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        c->in = p;
        c->in_cap = c->in_len + READ_ROOM;
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}


static void on_write(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}


/* Counts and drops the complete frames at the front of the buffer. */
static int take_frames(echo_client_t *c, size_t *count)
{
    const unsigned char *p = (const unsigned char *)c->in;
    size_t off = 0;

    *count = 0;
    while (c->in_len - off >= 4) {
        size_t n = (size_t)p[off] << 24 | (size_t)p[off + 1] << 16 |
                   (size_t)p[off + 2] << 8 | p[off + 3];

        if (n > FRAME_MAX)
            return MS_EPROTO;
        if (c->in_len - off < 4 + n)
            break;
        off += 4 + n;
        (*count)++;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return 0;
}


/* One uv_write carries the replies to every frame of this read. */
static void answer(echo_client_t *c, uv_stream_t *s, size_t count)
{
    echo_t *e = c->echo;
    echo_write_t *w = malloc(sizeof(*w) + count * e->reply_len);
    uv_buf_t out;

    if (w == NULL) {
        uv_close((uv_handle_t *)s, on_client_closed);
        return;
    }
    for (size_t i = 0; i < count; i++)
        memcpy(w->data + i * e->reply_len, e->reply, e->reply_len);
    out = uv_buf_init(w->data, (unsigned)(count * e->reply_len));
    if (uv_write(&w->req, s, &out, 1, on_write) != 0) {
        free(w);
        uv_close((uv_handle_t *)s, on_client_closed);
    }
}


static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    echo_client_t *c = s->data;
    size_t count;

    (void)buf;
    if (n == 0)
        return;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_client_closed);
        return;
    }
    c->in_len += (size_t)n;
    if (take_frames(c, &count) < 0) {
        uv_close((uv_handle_t *)s, on_client_closed);
        return;
    }
    if (count > 0)
        answer(c, s, count);
}


static void on_connection(uv_stream_t *server, int status)
{
    echo_t *e = server->data;
    echo_client_t *c;

    if (status < 0 || (c = calloc(1, sizeof(*c))) == NULL)
        return;
    c->echo = e;
    uv_pipe_init(&e->loop, &c->pipe, 0);
    c->pipe.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0 ||
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) != 0)
        uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}


int bench_echo_run(int listen_fd, size_t reply_size)
{
    echo_t e = {0};
    int rc;

    if ((rc = build_reply(&e, reply_size)) < 0)
        return rc;
    if (uv_loop_init(&e.loop) != 0)
        return MS_EINTERNAL;
    uv_pipe_init(&e.loop, &e.server, 0);
    e.server.data = &e;
    if (uv_pipe_open(&e.server, listen_fd) != 0 ||
        uv_listen((uv_stream_t *)&e.server, 128, on_connection) != 0)
        return MS_EINTERNAL;
    uv_run(&e.loop, UV_RUN_DEFAULT);
    return MS_EINTERNAL;
}
