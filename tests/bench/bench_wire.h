/*
 * bench_wire.h - meshsync-bench's client connections: Unix or TCP
 * sockets speaking either meshsync frames (4-byte big-endian length plus a
 * msgpack map) or RESP (parsed with hiredis's redisReader), and the
 * allocation-free reading of what the bench needs from each reply.
 *
 * A reply is taken apart just enough to check it: a frame's top-level
 * map is scanned for "ok" (and, when asked, "push", "version", "ready");
 * a RESP reply keeps its type, top-level integers and one string. Bench
 * process only, single-threaded.
 */
#ifndef BENCH_WIRE_H
#define BENCH_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <hiredis/read.h>

typedef enum bench_wire_e { BENCH_WIRE_FRAME, BENCH_WIRE_RESP } bench_wire_t;

/* What one reply said. Pointers stay valid until the next bench_conn_*. */
typedef struct bench_msg_s {
    bool ok;          /* frame: ok is true; RESP: not an error, no refusal */
    bool push;        /* frame: a push (no request id) */
    bool reset;       /* frame: a push "reset" (history was lost) */
    bool has_version; /* frame: "version"; RESP: write.lua's {1, version} */
    uint64_t version;
    int ready;        /* frame: health's "ready" (1, 0), -1 when absent */
    const char *body; /* frame: the body; RESP: the string value, or NULL */
    size_t len;
} bench_msg_t;

/* A RESP reply as the reader's object functions saw it (see .c). */
typedef struct bench_resp_s {
    int type;          /* the root's REDIS_REPLY_* */
    int elements;      /* the root array's size */
    long long ints[4]; /* a root integer, or a root array's integers */
    char tag[12];      /* a root array's first string, cut */
    char *str;         /* the root string, or a root array's third */
    size_t str_len;
    size_t str_cap;
    bool str_set;
} bench_resp_t;

typedef struct bench_conn_s {
    int fd;
    bench_wire_t wire;
    bool scan_all; /* frames: read past "ok" (push, version, ready) */
    char *buf;     /* frames: received bytes in [start, end) */
    size_t start;
    size_t end;
    size_t cap;
    redisReader *reader; /* RESP */
    bench_resp_t resp;
} bench_conn_t;

/* The largest frame or RESP string the bench takes. */
#define BENCH_WIRE_MAX (4u * 1024 * 1024)

/* How long a blocking send or receive waits before it fails. */
#define BENCH_WIRE_TIMEOUT_MS 30000

/* Connects to a Unix socket; 0 or a negative code (errno kept). */
int bench_conn_unix(bench_conn_t *c, const char *path, bench_wire_t wire);

/* Connects to 127.0.0.1:port with TCP_NODELAY. */
int bench_conn_tcp(bench_conn_t *c, int port, bench_wire_t wire);

/* Closes the socket and frees the buffers; safe on a closed conn. */
void bench_conn_close(bench_conn_t *c);

/* Sends every byte (blocking, bounded by BENCH_WIRE_TIMEOUT_MS). */
int bench_conn_send(bench_conn_t *c, const void *p, size_t n);

/* Sends the iovecs in order, the same way. */
int bench_conn_sendv(bench_conn_t *c, struct iovec *iov, int n);

/*
 * Reads what has arrived: blocking up to BENCH_WIRE_TIMEOUT_MS unless
 * nonblock. Returns the byte count (0 when nonblock and nothing came),
 * or a negative code (EOF, error, timeout, interrupted).
 */
int bench_conn_fill(bench_conn_t *c, bool nonblock);

/*
 * Takes the next complete reply out of what was read: 1 with *m, 0 when
 * more bytes are needed, or a negative code for a malformed reply.
 */
int bench_conn_next(bench_conn_t *c, bench_msg_t *m);

/*
 * bench_conn_next(), filling (blocking) until a reply is complete: 0 with
 * *m, or a negative code.
 */
int bench_conn_recv(bench_conn_t *c, bench_msg_t *m);

/* Waits up to timeout_ms for bytes to read: 1, 0 on timeout, or < 0. */
int bench_conn_wait(bench_conn_t *c, int timeout_ms);

/*
 * Scans a frame body's top-level map (no allocation): ok, push, version,
 * ready into *m; stops after "ok" unless all. Negative when the body is
 * not one well-formed msgpack map.
 */
int bench_wire_scan(const char *body, size_t len, bool all, bench_msg_t *m);

#endif
