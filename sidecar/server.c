/*
 * server.c - the Unix-socket server and its client sessions (see
 * server.h). Entry points: ms_server_start(), ms_server_close(), and the
 * ms_session_* calls the handlers reply through. Loop thread only.
 */
#include "server.h"

#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "alloc.h"
#include "frame.h"
#include "handlers.h"
#include "log.h"
#include "waits.h"

/*
 * A client's requests are left unread while this much of its output is
 * unsent, or while this many of its requests wait for Redis: a client
 * that pipelines without reading cannot grow the daemon's memory.
 */
#define OUTPUT_HIGH_WATER (8u << 20)
#define PENDING_MAX       4096

struct ms_server_s {
    ms_app_t *app;
    uv_pipe_t listener;
    uv_check_t check;     /* flushes replies after I/O callbacks */
    uv_prepare_t prepare; /* ...and those made by timers, before polling */
    LIST_HEAD(, ms_session_s) sessions; /* every open session */
    ms_session_t *dirty;                /* sessions with output to send */
    unsigned long next_number;
    int open_handles;
    bool bound;    /* the socket file is ours to remove */
    bool draining; /* no longer listening; sessions finish their work */
    bool closing;
};

struct ms_session_s {
    ms_server_t *server;
    uv_pipe_t pipe;
    ms_frame_reader_t reader;
    msgpack_sbuffer out; /* replies not yet handed to uv_write */
    msgpack_zone zone;   /* holds the request being handled */
    msgpack_packer packer;
    size_t frame_start;
    size_t in_flight;              /* bytes handed to uv_write, not yet done */
    LIST_ENTRY(ms_session_s) open; /* in server->sessions */
    ms_session_t *next_dirty;
    bool is_dirty;
    bool closed;
    bool close_after_flush;
    bool eof; /* the client shut its side; answer, then close */
    bool reading;
    bool handling; /* inside handle_frames(): no recursion */
    int refs;
    unsigned pending; /* requests held by ms_session_hold() */
    size_t reserved;  /* reply bytes those requests may still produce */
    unsigned long number;
    char *conn; /* bound by hello, or NULL */
    size_t conn_len;
};

typedef struct write_req_s {
    uv_write_t req;
    ms_session_t *session;
    msgpack_sbuffer buf;
    size_t len; /* the bytes of buf handed to uv_write: its tail */
} write_req_t;

/* A session's request zone: its chunks, and a request that may keep one. */
#define ZONE_CHUNK 2048
#define ZONE_KEEP  (16 * 1024)

/* A session's output buffer is kept between flushes up to this size. */
#define OUTPUT_KEEP (64 * 1024)

static void session_close(ms_session_t *s, const char *reason);
static void session_flush(ms_session_t *s);

void ms_session_ref(ms_session_t *s)
{
    s->refs++;
}


void ms_session_unref(ms_session_t *s)
{
    if (--s->refs > 0)
        return;
    ms_frame_reader_free(&s->reader);
    msgpack_sbuffer_destroy(&s->out);
    msgpack_zone_destroy(&s->zone);
    free(s->conn);
    free(s);
}


bool ms_session_closed(const ms_session_t *s)
{
    return s->closed;
}


size_t ms_session_unsent(const ms_session_t *s)
{
    if (s->closed)
        return 0;

    /* Not in_flight: it counts bytes the kernel took until their callback. */
    return s->out.size +
           uv_stream_get_write_queue_size((const uv_stream_t *)&s->pipe);
}


size_t ms_session_output_limit(void)
{
    return OUTPUT_HIGH_WATER;
}


void ms_session_cut(ms_session_t *s, const char *reason)
{
    if (s->closed)
        return;
    ms_log_warn("client cut off", "client=%lu reason=\"%s\"", s->number,
                reason);
    session_close(s, reason);
}


const char *ms_session_conn(const ms_session_t *s, size_t *len)
{
    *len = s->conn_len;
    return s->conn;
}


void ms_session_bind(ms_session_t *s, const char *conn, size_t len)
{
    free(s->conn);
    s->conn = ms_strndup(conn, len);
    s->conn_len = len;
}


msgpack_zone *ms_session_zone(ms_session_t *s)
{
    return &s->zone;
}


void ms_session_zone_done(ms_session_t *s, size_t frame_len)
{
    msgpack_zone_clear(&s->zone);

    /* The zone keeps its last chunk: not one a large request needed. */
    if (frame_len > ZONE_KEEP) {
        msgpack_zone_destroy(&s->zone);
        if (!msgpack_zone_init(&s->zone, ZONE_CHUNK))
            ms_oom();
    }
}


msgpack_packer *ms_session_reply_begin(ms_session_t *s)
{
    /* ms_frame_begin only fails when memory runs out. */
    if (ms_frame_begin(&s->out, &s->frame_start) != 0)
        ms_oom();
    return &s->packer;
}


/* Puts s on the list that the check and prepare handlers work through. */
static void mark_dirty(ms_session_t *s)
{
    if (s->is_dirty)
        return;

    /* The dirty list holds a reference until the flush. */
    ms_session_ref(s);
    s->is_dirty = true;
    s->next_dirty = s->server->dirty;
    s->server->dirty = s;
}


void ms_session_reply_end(ms_session_t *s)
{
    ms_frame_end(&s->out, s->frame_start);
    if (s->closed) {
        s->out.size = 0;
        return;
    }
    mark_dirty(s);
}


static void handle_frames(ms_session_t *s);

static void on_write(uv_write_t *req, int status)
{
    write_req_t *w = (write_req_t *)req;
    ms_session_t *s = w->session;

    s->in_flight -= w->len;
    msgpack_sbuffer_destroy(&w->buf);
    free(w);

    if (status < 0 && !s->closed)
        session_close(s, uv_strerror(status));
    else
        handle_frames(s);
    ms_session_unref(s);
}


/*
 * Tries to send the session's output at once, with one write(2) and no
 * allocation: the usual case. Returns the bytes sent (0 when the socket
 * is full or libuv still queues earlier output), or a negative libuv
 * error.
 */
static int flush_now(ms_session_t *s)
{
    uv_buf_t buf = uv_buf_init(s->out.data, (unsigned)s->out.size);
    int n;

    /* Output already queued must go first. */
    if (s->in_flight > 0)
        return 0;
    n = uv_try_write((uv_stream_t *)&s->pipe, &buf, 1);
    if (n == UV_EAGAIN)
        return 0;
    if (n < 0 || (size_t)n < s->out.size)
        return n;

    s->out.size = 0;
    if (s->out.alloc > OUTPUT_KEEP) {
        msgpack_sbuffer_destroy(&s->out);
        msgpack_sbuffer_init(&s->out);
    }
    return n;
}


/* Hands the session's pending output to libuv: sent now, or queued. */
static void session_flush(ms_session_t *s)
{
    write_req_t *w;
    uv_buf_t buf;
    int sent;
    int rc;

    if (s->closed || s->out.size == 0)
        return;
    sent = flush_now(s);
    if (sent < 0) {
        session_close(s, uv_strerror(sent));
        return;
    }
    if (s->out.size == 0)
        return;

    /* The rest waits in libuv's queue; the buffer goes with it. */
    w = ms_malloc(sizeof(*w));
    w->session = s;
    w->buf = s->out;
    w->len = w->buf.size - (size_t)sent;
    msgpack_sbuffer_init(&s->out);
    buf = uv_buf_init(w->buf.data + sent, (unsigned)w->len);
    s->in_flight += w->len;
    ms_session_ref(s);

    rc = uv_write(&w->req, (uv_stream_t *)&s->pipe, &buf, 1, on_write);
    if (rc < 0) {
        s->in_flight -= w->len;
        msgpack_sbuffer_destroy(&w->buf);
        free(w);
        ms_session_unref(s);
        session_close(s, uv_strerror(rc));
    }
}


static void flush_dirty(ms_server_t *srv)
{
    while (srv->dirty != NULL) {
        ms_session_t *s = srv->dirty;

        srv->dirty = s->next_dirty;
        s->is_dirty = false;
        session_flush(s);

        /* Output sent at once may end a stall no write callback will:
         * frames held back wait, and a client that hung up is done. */
        handle_frames(s);
        ms_session_unref(s);
    }
}


static void on_check(uv_check_t *h)
{
    flush_dirty(h->data);
}


static void on_prepare(uv_prepare_t *h)
{
    flush_dirty(h->data);
}


static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ms_session_t *s = h->data;
    char *base;
    size_t len;

    if (ms_frame_reader_space(&s->reader, suggested, &base, &len) != 0)
        ms_oom();
    *buf = uv_buf_init(base, (unsigned)len);
}


static bool session_busy(const ms_session_t *s)
{
    return s->in_flight + s->out.size + s->reserved >= OUTPUT_HIGH_WATER ||
           s->pending >= PENDING_MAX;
}


static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/*
 * After anything that changes a session's state: reads while it is not
 * busy and wants input, and closes it once a client that is finished
 * (hung up, or broke the stream) has had every answer.
 */
static void session_settle(ms_session_t *s)
{
    bool want;

    if (s->closed)
        return;
    if ((s->eof || s->close_after_flush) && s->pending == 0 &&
        s->in_flight == 0 && s->out.size == 0) {
        session_close(s, s->eof ? "client hung up" : "protocol error");
        return;
    }
    want = !s->eof && !s->close_after_flush && !session_busy(s);
    if (want == s->reading)
        return;
    s->reading = want;
    if (want)
        uv_read_start((uv_stream_t *)&s->pipe, on_alloc, on_read);
    else
        uv_read_stop((uv_stream_t *)&s->pipe);
}


/*
 * Runs the complete frames buffered so far, while the session is not
 * busy. Replies completing inside a handler may call back here: the
 * outer call carries on instead, so the stack stays flat.
 */
static void handle_frames(ms_session_t *s)
{
    const char *body;
    size_t len;
    int rc = -1;

    if (s->handling || s->closed)
        return;
    s->handling = true;

    /* The handlers may close the session (never free it: we hold a ref). */
    ms_session_ref(s);
    while (!s->closed && !s->close_after_flush && !session_busy(s) &&
           (rc = ms_frame_reader_next(&s->reader, &body, &len)) != 0) {
        if (rc == MS_ETOOLARGE) {
            char msg[96];

            snprintf(msg, sizeof(msg), "frame longer than %zu bytes",
                     s->reader.max_frame);
            ms_handlers_reply_error(s, MS_ETOOLARGE, msg);
            /* The rest of the stream is the oversized body: unusable. */
            s->close_after_flush = true;
            break;
        }
        ms_handlers_frame(s->server->app, s, body, len);
    }
    s->handling = false;

    /*
     * After the client's EOF no frame can complete any more: what is left
     * is at most a partial one. Its buffer goes now, not when the last
     * reply does; a closed peer is only noticed when a reply fails.
     */
    if (s->eof && !s->closed && rc == 0)
        ms_frame_reader_free(&s->reader);
    session_settle(s);
    ms_session_unref(s);
}


static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    ms_session_t *s = stream->data;

    (void)buf;
    if (nread == UV_EOF) {
        s->eof = true;
        handle_frames(s);
        return;
    }
    if (nread < 0) {
        session_close(s, uv_strerror((int)nread));
        return;
    }
    ms_frame_reader_commit(&s->reader, (size_t)nread);
    handle_frames(s);
}


void ms_session_hold(ms_session_t *s, size_t reply_bytes)
{
    s->pending++;
    s->reserved += reply_bytes;
    ms_session_ref(s);
}


/*
 * A request was answered, so held-back frames may go on, but not from
 * here: this runs inside the write pipeline's and the waits' callbacks,
 * which must not see a new request arrive half-way. The dirty list
 * resumes the session once the loop is back at the top.
 */
void ms_session_release(ms_session_t *s, size_t reply_bytes)
{
    s->pending--;
    s->reserved -= reply_bytes;
    if (!s->closed)
        mark_dirty(s);
    ms_session_unref(s);
}


/* The server is freed when its last handle, session or not, has closed. */
static void server_handle_gone(ms_server_t *srv)
{
    if (--srv->open_handles == 0 && srv->closing)
        free(srv);
}


static void on_session_closed(uv_handle_t *h)
{
    ms_session_t *s = h->data;

    server_handle_gone(s->server);
    ms_session_unref(s);
}


/*
 * Every client disconnect goes through here, so it is logged once. What
 * the session buffered goes at once; requests still waiting on Redis keep
 * only the small session struct alive until they are answered.
 */
static void session_close(ms_session_t *s, const char *reason)
{
    ms_server_t *srv = s->server;

    if (s->closed)
        return;
    s->closed = true;
    ms_log_debug("client closed", "client=%lu reason=\"%s\"", s->number,
                 reason);
    LIST_REMOVE(s, open);
    ms_frame_reader_free(&s->reader);
    msgpack_sbuffer_destroy(&s->out);
    msgpack_sbuffer_init(&s->out);
    ms_waits_session_closed(srv->app, s);
    ms_handlers_session_closed(srv->app, s);
    uv_close((uv_handle_t *)&s->pipe, on_session_closed);
}


/* Packing a reply cannot fail half-way: out of memory ends the daemon. */
static int pack_write(void *data, const char *buf, size_t len)
{
    if (msgpack_sbuffer_write(data, buf, len) != 0)
        ms_oom();
    return 0;
}


static void on_connection(uv_stream_t *listener, int status)
{
    ms_server_t *srv = listener->data;
    ms_session_t *s;

    if (status < 0) {
        ms_log_warn("accept failed", "error=\"%s\"", uv_strerror(status));
        return;
    }
    s = ms_calloc(1, sizeof(*s));
    s->server = srv;
    s->refs = 1; /* released in on_session_closed */
    s->number = ++srv->next_number;
    ms_frame_reader_init(&s->reader, srv->app->cfg->max_frame);
    msgpack_sbuffer_init(&s->out);
    msgpack_packer_init(&s->packer, &s->out, pack_write);
    if (!msgpack_zone_init(&s->zone, ZONE_CHUNK))
        ms_oom();
    uv_pipe_init(srv->app->loop, &s->pipe, 0);
    s->pipe.data = s;
    srv->open_handles++;

    if (uv_accept(listener, (uv_stream_t *)&s->pipe) < 0) {
        s->closed = true;
        uv_close((uv_handle_t *)&s->pipe, on_session_closed);
        return;
    }
    LIST_INSERT_HEAD(&srv->sessions, s, open);
    ms_log_debug("client connected", "client=%lu", s->number);
    session_settle(s);
}


/*
 * Decides what to do with an existing file at the socket path: a socket
 * nobody listens on is left over from a crash and may go; anything else
 * stays, and we refuse to start rather than take it over.
 */
static int clear_stale_socket(const char *path, ms_error_t *err)
{
    struct sockaddr_un addr;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) != 0)
        return errno == ENOENT
                   ? 0
                   : ms_error_set(err, MS_EINTERNAL, "cannot stat %s: %s", path,
                                  strerror(errno));
    if (!S_ISSOCK(st.st_mode))
        return ms_error_set(err, MS_EINTERNAL, "%s exists and is not a socket",
                            path);

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return ms_error_set(err, MS_EINTERNAL, "socket: %s", strerror(errno));
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof(addr.sun_path) - 1);
    rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 ? 0 : errno;
    close(fd);
    if (rc == 0)
        return ms_error_set(err, MS_EINTERNAL,
                            "another daemon is listening on %s", path);

    /* Only a refused connection proves nobody listens; EACCES does not. */
    if (rc != ECONNREFUSED)
        return ms_error_set(err, MS_EINTERNAL, "cannot check %s: %s", path,
                            strerror(rc));
    ms_log_warn("removing stale socket", "path=\"%s\"", path);
    if (unlink(path) != 0 && errno != ENOENT)
        return ms_error_set(err, MS_EINTERNAL, "cannot remove %s: %s", path,
                            strerror(errno));
    return 0;
}


/* The default socket lives in /run/meshsync, which may not exist yet. */
static void make_parent_dir(const char *path)
{
    char *copy = ms_strndup(path, strlen(path));
    const char *dir = dirname(copy);

    if (mkdir(dir, 0755) == 0)
        ms_log_info("created socket directory", "path=\"%s\"", dir);
    free(copy);
}


static int listen_on(ms_server_t *srv, const char *path, ms_error_t *err)
{
    int rc;

    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return ms_error_set(err, MS_EINVAL, "socket path too long: %s", path);
    make_parent_dir(path);
    rc = clear_stale_socket(path, err);
    if (rc < 0)
        return rc;

    uv_pipe_init(srv->app->loop, &srv->listener, 0);
    srv->listener.data = srv;
    srv->open_handles++;
    rc = uv_pipe_bind(&srv->listener, path);
    srv->bound = rc == 0;
    if (rc == 0 && chmod(path, srv->app->cfg->socket_mode) != 0)
        rc = uv_translate_sys_error(errno);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->listener, 512, on_connection);
    if (rc < 0)
        return ms_error_set(err, MS_EINTERNAL, "cannot listen on %s: %s", path,
                            uv_strerror(rc));
    return 0;
}


int ms_server_start(ms_app_t *app, ms_error_t *err)
{
    ms_server_t *srv = ms_calloc(1, sizeof(*srv));
    int rc;

    srv->app = app;
    app->server = srv;
    uv_check_init(app->loop, &srv->check);
    uv_prepare_init(app->loop, &srv->prepare);
    srv->check.data = srv;
    srv->prepare.data = srv;
    srv->open_handles += 2;
    uv_check_start(&srv->check, on_check);
    uv_prepare_start(&srv->prepare, on_prepare);

    rc = listen_on(srv, app->cfg->socket_path, err);
    if (rc < 0) {
        ms_server_close(srv);
        return rc;
    }
    ms_log_info("listening", "socket=\"%s\" mode=%04o", app->cfg->socket_path,
                app->cfg->socket_mode);
    return 0;
}


static void on_server_handle_closed(uv_handle_t *h)
{
    server_handle_gone(h->data);
}


void ms_server_drain(ms_server_t *srv)
{
    ms_session_t *s, *next;

    if (srv->draining || srv->closing)
        return;
    srv->draining = true;
    if (srv->bound)
        unlink(srv->app->cfg->socket_path);
    srv->bound = false;
    if (srv->listener.loop != NULL)
        uv_close((uv_handle_t *)&srv->listener, on_server_handle_closed);

    /* As if every client had finished sending: answer, then close. */
    for (s = LIST_FIRST(&srv->sessions); s != NULL; s = next) {
        next = LIST_NEXT(s, open);
        s->eof = true;
        session_settle(s);
    }
}


size_t ms_server_sessions(const ms_server_t *srv)
{
    size_t n = 0;

    for (const ms_session_t *s = LIST_FIRST(&srv->sessions); s != NULL;
         s = LIST_NEXT(s, open))
        n++;
    return n;
}


void ms_server_close(ms_server_t *srv)
{
    if (srv->closing)
        return;
    srv->closing = true;
    srv->app->server = NULL;

    /* Sessions on the dirty list hold a reference each; drop them. */
    while (srv->dirty != NULL) {
        ms_session_t *s = srv->dirty;

        srv->dirty = s->next_dirty;
        s->is_dirty = false;
        ms_session_unref(s);
    }

    while (!LIST_EMPTY(&srv->sessions))
        session_close(LIST_FIRST(&srv->sessions), "daemon shutting down");

    if (srv->bound)
        unlink(srv->app->cfg->socket_path);
    if (srv->listener.loop != NULL && !srv->draining)
        uv_close((uv_handle_t *)&srv->listener, on_server_handle_closed);
    uv_close((uv_handle_t *)&srv->check, on_server_handle_closed);
    uv_close((uv_handle_t *)&srv->prepare, on_server_handle_closed);
}
