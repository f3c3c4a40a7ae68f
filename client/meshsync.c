/*
 * meshsync.c - libmeshsync: a blocking client of the meshsyncd socket.
 *
 * Entry points are the meshsync_* functions of meshsync.h. Each call packs
 * one request frame with a fresh id, writes it, and reads frames until the
 * reply arrives. The error of the last call stays on the handle; an "io"
 * or "protocol" failure closes the socket and every later call repeats it.
 *
 * No threads of its own: a handle serves one thread at a time. Never logs,
 * exits or aborts; allocation failure is reported as "internal".
 */
#define _GNU_SOURCE /* strerror_r returning char * */

#include "meshsync.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "frame.h"
#include "value.h"

#define DEFAULT_TIMEOUT_MS 5000

/*
 * Replies hold values the daemon already accepted under its own limits,
 * which may be configured above the request frame default.
 */
#define REPLY_MAX  (16 * 1024 * 1024)
#define READ_CHUNK (64 * 1024)

/* The daemon's bounds on a read's wait for minVersion (PROTOCOL.md). */
#define WAIT_DEFAULT_MS 1000
#define WAIT_MAX_MS     60000

#define CODE_MAX 32
#define MSG_MAX  256

/* What a successful reply must carry besides id and ok. */
#define WANT_VALUE   1
#define WANT_VERSION 2

struct meshsync {
    int fd; /* -1 once closed */
    int timeout_ms;
    /* The running call's limit: timeout_ms plus any minVersion wait. */
    int64_t call_timeout_ms;
    int dead;   /* an io or protocol failure closed the socket */
    int failed; /* the last call failed: code and msg are set */
    uint64_t next_id;
    int strong; /* gets read from Redis: consistency "strong" */
    char code[CODE_MAX];
    char msg[MSG_MAX];
    ms_frame_reader_t reader;
    /* Pushed events not yet taken by meshsync_next_event(), oldest first. */
    struct event_node *events;
    struct event_node *events_tail;
    size_t nevents;
    size_t event_bytes;
};

typedef struct request_s {
    const char *op;
    const char *key;    /* "conn" or "room"; NULL for none */
    const char *target; /* the id under key; NULL leaves key out */
    const char *strategy;
    int has_value;
    meshsync_format_t format;
    const char *data;
    size_t len;
    json_t *json; /* data parsed, for MESHSYNC_JSON */
    int want;     /* WANT_* bits */
    int has_min;  /* a get that waits for min_version */
    uint64_t min_version;
    int wait_ms; /* sent as "timeout"; -1 leaves the daemon's default */
    int strong;  /* sends consistency "strong" */
    /* More fields: extra_n key/value pairs packed by pack_extra. */
    uint32_t extra_n;
    int (*pack_extra)(msgpack_packer *pk, const void *arg);
    const void *extra_arg;
} request_t;

typedef struct reply_s {
    msgpack_unpacked up;
    const msgpack_object *id;
    const msgpack_object *ok;
    const msgpack_object *error;
    const msgpack_object *value;
    const msgpack_object *version;
    const msgpack_object *stale;
    const msgpack_object *behind;
} reply_t;

static void disconnect(meshsync_t *ms)
{
    if (ms->fd >= 0)
        close(ms->fd);
    ms->fd = -1;
    ms->dead = 1;

    /* Drop buffered bytes: nothing after a failure may be parsed. */
    ms_frame_reader_free(&ms->reader);
    ms_frame_reader_init(&ms->reader, REPLY_MAX);
}

/* Copies text for a one-line message: control bytes become '?'. */
static void copy_line(char *dst, size_t cap, const char *src, size_t len)
{
    size_t i;

    /* Cut before a whole UTF-8 character, not inside one. */
    if (len > cap - 1) {
        len = cap - 1;
        while (len > 0 && ((unsigned char)src[len] & 0xc0) == 0x80)
            len--;
    }
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];

        dst[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    dst[len] = '\0';
}

static int fail(meshsync_t *ms, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a local error and returns code; io and protocol close. */
static int fail(meshsync_t *ms, int code, const char *fmt, ...)
{
    va_list ap;

    snprintf(ms->code, sizeof(ms->code), "%s", ms_error_name(code));
    va_start(ap, fmt);
    vsnprintf(ms->msg, sizeof(ms->msg), fmt, ap);
    va_end(ap);
    ms->failed = 1;
    if (code == MS_EIO || code == MS_EPROTO)
        disconnect(ms);
    return code;
}

static int fail_errno(meshsync_t *ms, int e, const char *what)
{
    char buf[128];

    return fail(ms, MS_EIO, "%s: %s", what, strerror_r(e, buf, sizeof(buf)));
}

static int fail_connect(meshsync_t *ms, int e, const char *path)
{
    char buf[128];

    return fail(ms, MS_EIO, "cannot connect to %.*s: %s", 120, path,
                strerror_r(e, buf, sizeof(buf)));
}

/* Records an error a value or frame function reported through err. */
static int fail_err(meshsync_t *ms, int rc, const ms_error_t *err)
{
    if (rc == MS_ENOMEM)
        return fail(ms, rc, "out of memory");
    if (err->code != rc || err->msg[0] == '\0')
        return fail(ms, rc, "%s", ms_error_name(rc));
    return fail(ms, rc, "%s", err->msg);
}

/* Starts a call: 0, or an error code when ms is NULL or dead. */
static int begin_call(meshsync_t *ms)
{
    if (ms == NULL)
        return MS_EINVAL;
    if (ms->dead)
        return MS_EIO;
    ms->failed = 0;
    ms->code[0] = '\0';
    ms->msg[0] = '\0';
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* -1 for no deadline. */
static int64_t deadline_after(int64_t timeout_ms)
{
    return timeout_ms > 0 ? now_ms() + timeout_ms : -1;
}

/* Waits until fd is ready for events: 1, 0 at the deadline, or an error. */
static int poll_fd(meshsync_t *ms, short events, int64_t deadline)
{
    struct pollfd pfd = {.fd = ms->fd, .events = events};
    int wait = -1;
    int n;

    for (;;) {
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();

            wait = left > 0 ? (int)left : 0;
        }
        n = poll(&pfd, 1, wait);
        if (n >= 0)
            return n > 0;
        if (errno != EINTR)
            return fail_errno(ms, errno, "poll");
    }
}

/* Waits until fd is ready for events; fails with io at the deadline. */
static int wait_fd(meshsync_t *ms, short events, int64_t deadline)
{
    int rc = poll_fd(ms, events, deadline);

    if (rc == 0)
        return fail(ms, MS_EIO,
                    "timed out after %lld ms waiting for the sidecar",
                    (long long)ms->call_timeout_ms);
    return rc < 0 ? rc : 0;
}

static int send_all(meshsync_t *ms, const char *buf, size_t len,
                    int64_t deadline)
{
    size_t off = 0;
    ssize_t n;
    int rc;

    while (off < len) {
        /* MSG_NOSIGNAL: a closed socket must not raise SIGPIPE. */
        n = send(ms->fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            off += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return fail_errno(ms, errno, "cannot send to the sidecar");
        rc = wait_fd(ms, POLLOUT, deadline);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * Reads what the socket holds now into the frame reader: 1 when some
 * bytes came, 0 when none were there, or a negative code (the sidecar
 * closed the connection, an error).
 */
static int read_once(meshsync_t *ms)
{
    char *base;
    size_t room;
    ssize_t n;

    /* A reply left unread would answer the next call: give up. */
    if (ms_frame_reader_space(&ms->reader, READ_CHUNK, &base, &room) < 0) {
        fail(ms, MS_ENOMEM, "out of memory");
        disconnect(ms);
        return MS_ENOMEM;
    }
    n = recv(ms->fd, base, room, MSG_DONTWAIT);
    if (n > 0) {
        ms_frame_reader_commit(&ms->reader, (size_t)n);
        return 1;
    }
    if (n == 0)
        return fail(ms, MS_EIO, "the sidecar closed the connection");
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
    return fail_errno(ms, errno, "cannot read from the sidecar");
}

/* Reads what the socket holds into the frame reader, waiting if needed. */
static int fill_reader(meshsync_t *ms, int64_t deadline)
{
    int rc;

    for (;;) {
        rc = read_once(ms);
        if (rc != 0)
            return rc < 0 ? rc : 0;
        rc = wait_fd(ms, POLLIN, deadline);
        if (rc < 0)
            return rc;
    }
}

static int pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);

    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

/* Checks and, for JSON, parses the value before anything is packed. */
static int load_value(meshsync_t *ms, request_t *req)
{
    ms_value_limits_t lim = {SIZE_MAX, MS_VALUE_DEPTH_CAP};
    ms_error_t err = {MS_OK, ""};
    int rc;

    if (req->data == NULL)
        return fail(ms, MS_EINVAL, "no value given");
    if (req->format == MESHSYNC_MSGPACK) {
        if (req->len > MS_FRAME_DEFAULT_MAX)
            return fail(ms, MS_ETOOLARGE,
                        "value of %zu bytes exceeds the frame limit", req->len);
        rc = ms_msgpack_check(req->data, req->len, MS_VALUE_DEPTH_CAP, &err);
    } else if (req->format == MESHSYNC_JSON) {
        rc = ms_value_parse(req->data, req->len, &lim, &req->json, &err);
    } else {
        return fail(ms, MS_EINVAL, "unknown value format %d", (int)req->format);
    }
    return rc < 0 ? fail_err(ms, rc, &err) : 0;
}

static int pack_value(const request_t *req, msgpack_packer *pk,
                      msgpack_sbuffer *sb)
{
    if (pack_str(pk, "value") != 0)
        return MS_ENOMEM;

    /* Checked msgpack goes in as it is: re-packing would only copy it. */
    if (req->format == MESHSYNC_MSGPACK) {
        if (msgpack_sbuffer_write(sb, req->data, req->len) != 0)
            return MS_ENOMEM;
        return 0;
    }
    return ms_value_pack(req->json, pk);
}

static int pack_request(const request_t *req, uint64_t id, msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    uint32_t n = 2;

    n += req->target != NULL;
    n += req->strategy != NULL;
    n += req->has_value != 0;
    n += req->has_min ? 1 + (req->wait_ms >= 0) : 0;
    n += req->strong != 0;
    n += req->extra_n;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (msgpack_pack_map(&pk, n) || pack_str(&pk, "id") ||
        msgpack_pack_uint64(&pk, id) || pack_str(&pk, "op") ||
        pack_str(&pk, req->op))
        return MS_ENOMEM;
    if (req->target != NULL &&
        (pack_str(&pk, req->key) || pack_str(&pk, req->target)))
        return MS_ENOMEM;
    if (req->strategy != NULL &&
        (pack_str(&pk, "strategy") || pack_str(&pk, req->strategy)))
        return MS_ENOMEM;
    if (req->has_min && (pack_str(&pk, "minVersion") ||
                         msgpack_pack_uint64(&pk, req->min_version)))
        return MS_ENOMEM;
    if (req->has_min && req->wait_ms >= 0 &&
        (pack_str(&pk, "timeout") || msgpack_pack_int(&pk, req->wait_ms)))
        return MS_ENOMEM;
    if (req->strong &&
        (pack_str(&pk, "consistency") || pack_str(&pk, "strong")))
        return MS_ENOMEM;
    if (req->extra_n > 0 && req->pack_extra(&pk, req->extra_arg) != 0)
        return MS_ENOMEM;
    return req->has_value ? pack_value(req, &pk, sb) : 0;
}

/* Builds the whole frame into sb; too_large if it would be refused. */
static int build_frame(meshsync_t *ms, const request_t *req, uint64_t id,
                       msgpack_sbuffer *sb)
{
    size_t start;
    size_t body;

    if (ms_frame_begin(sb, &start) < 0 || pack_request(req, id, sb) < 0)
        return fail(ms, MS_ENOMEM, "out of memory");

    body = sb->size - start - MS_FRAME_HEADER;
    if (body > MS_FRAME_DEFAULT_MAX)
        return fail(ms, MS_ETOOLARGE,
                    "request of %zu bytes exceeds the %d-byte frame limit",
                    body, MS_FRAME_DEFAULT_MAX);
    ms_frame_end(sb, start);
    return 0;
}

static int str_is(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);

    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

/* Points the reply's fields at the map's values; unknown keys pass. */
static int index_reply(meshsync_t *ms, reply_t *rep)
{
    const msgpack_object *root = &rep->up.data;
    uint32_t i;

    if (root->type != MSGPACK_OBJECT_MAP)
        return fail(ms, MS_EPROTO, "reply is not a map");
    for (i = 0; i < root->via.map.size; i++) {
        const msgpack_object_kv *kv = &root->via.map.ptr[i];

        if (str_is(&kv->key, "id"))
            rep->id = &kv->val;
        else if (str_is(&kv->key, "ok"))
            rep->ok = &kv->val;
        else if (str_is(&kv->key, "error"))
            rep->error = &kv->val;
        else if (str_is(&kv->key, "value"))
            rep->value = &kv->val;
        else if (str_is(&kv->key, "version"))
            rep->version = &kv->val;
        else if (str_is(&kv->key, "stale"))
            rep->stale = &kv->val;
        else if (str_is(&kv->key, "behind"))
            rep->behind = &kv->val;
    }
    return 0;
}

static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    uint32_t i;

    for (i = 0; i < map->via.map.size; i++) {
        if (str_is(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* Records the daemon's {code, message}; returns the matching MS_E*. */
static int take_daemon_error(meshsync_t *ms, const msgpack_object *error)
{
    const msgpack_object *code;
    const msgpack_object *msg;

    if (error == NULL || error->type != MSGPACK_OBJECT_MAP)
        return fail(ms, MS_EPROTO, "error reply without an error map");
    code = map_get(error, "code");
    msg = map_get(error, "message");
    if (code == NULL || code->type != MSGPACK_OBJECT_STR ||
        code->via.str.size == 0)
        return fail(ms, MS_EPROTO, "error reply without a code");

    copy_line(ms->code, sizeof(ms->code), code->via.str.ptr,
              code->via.str.size);
    if (msg != NULL && msg->type == MSGPACK_OBJECT_STR)
        copy_line(ms->msg, sizeof(ms->msg), msg->via.str.ptr,
                  msg->via.str.size);
    else
        snprintf(ms->msg, sizeof(ms->msg), "(no message)");
    ms->failed = 1;
    return ms_error_from_name(code->via.str.ptr, code->via.str.size);
}

/* A reply with id nil: the daemon could not read our request at all. */
static int take_refusal(meshsync_t *ms, const reply_t *rep)
{
    const msgpack_object *code = NULL;

    if (rep->error != NULL && rep->error->type == MSGPACK_OBJECT_MAP)
        code = map_get(rep->error, "code");
    if (code == NULL || code->type != MSGPACK_OBJECT_STR)
        return fail(ms, MS_EPROTO, "reply without a request id");
    return fail(ms, MS_EPROTO, "the sidecar refused the request frame: %.*s",
                (int)(code->via.str.size < 64 ? code->via.str.size : 64),
                code->via.str.ptr);
}

static int check_reply(meshsync_t *ms, const reply_t *rep, uint64_t id,
                       int want)
{
    if (rep->id != NULL && rep->id->type == MSGPACK_OBJECT_NIL)
        return take_refusal(ms, rep);
    if (rep->id == NULL || rep->id->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        rep->id->via.u64 != id)
        return fail(ms, MS_EPROTO, "reply does not carry the request's id");
    if (rep->ok == NULL || rep->ok->type != MSGPACK_OBJECT_BOOLEAN)
        return fail(ms, MS_EPROTO, "reply without a boolean ok");
    if (!rep->ok->via.boolean)
        return take_daemon_error(ms, rep->error);

    if ((want & WANT_VALUE) && rep->value == NULL)
        return fail(ms, MS_EPROTO, "reply without a value");
    if ((want & WANT_VERSION) && rep->version == NULL)
        return fail(ms, MS_EPROTO, "reply without a version");
    if (rep->version != NULL &&
        rep->version->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(ms, MS_EPROTO, "reply version is not an unsigned integer");
    if (rep->stale != NULL && rep->stale->type != MSGPACK_OBJECT_BOOLEAN)
        return fail(ms, MS_EPROTO, "reply stale flag is not a boolean");
    if (rep->behind != NULL && rep->behind->type != MSGPACK_OBJECT_NIL &&
        (rep->behind->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
         rep->behind->via.u64 > INT64_MAX))
        return fail(ms, MS_EPROTO, "reply behind is not nil or a count");
    return 0;
}

static int parse_reply(meshsync_t *ms, const char *body, size_t len,
                       uint64_t id, int want, reply_t *rep)
{
    ms_error_t err = {MS_OK, ""};
    size_t off = 0;
    int rc;

    /* Checked first: msgpack-c trusts declared counts when allocating. */
    rc = ms_msgpack_check(body, len, MS_VALUE_DEPTH_CAP + 1, &err);
    if (rc < 0)
        return fail(ms, MS_EPROTO, "malformed reply: %s", err.msg);

    rc = msgpack_unpack_next(&rep->up, body, len, &off);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        return fail(ms, MS_ENOMEM, "out of memory");
    if (rc != MSGPACK_UNPACK_SUCCESS || off != len)
        return fail(ms, MS_EPROTO, "malformed reply");

    rc = index_reply(ms, rep);
    return rc < 0 ? rc : check_reply(ms, rep, id, want);
}

static int take_push(meshsync_t *ms, const char *body, size_t len);
static void drop_events(meshsync_t *ms);

/*
 * Reads frames until the reply to id. Only one request is outstanding, so
 * any other frame is a protocol error, except pushes to a watching handle,
 * which are queued for meshsync_next_event(). The reply points into the
 * reader's buffer, valid until the next reader call.
 */

static int read_reply(meshsync_t *ms, uint64_t id, int want, int64_t deadline,
                      reply_t *rep)
{
    const char *body;
    size_t len;
    int rc;

    for (;;) {
        rc = ms_frame_reader_next(&ms->reader, &body, &len);
        if (rc < 0)
            return fail(ms, MS_EPROTO, "reply frame longer than %d bytes",
                        REPLY_MAX);

        /* A watching handle gets pushes between replies: queue them. */
        if (rc == 1) {
            rc = take_push(ms, body, len);
            if (rc == 0)
                return parse_reply(ms, body, len, id, want, rep);
            if (rc < 0)
                return rc;
            continue;
        }
        rc = fill_reader(ms, deadline);
        if (rc < 0)
            return rc;
    }
}

/*
 * The time a call may take: the handle's timeout, plus for a waiting read
 * the wait the daemon may spend before it even starts to answer.
 */
static int64_t call_timeout(const meshsync_t *ms, const request_t *req)
{
    if (ms->timeout_ms <= 0 || !req->has_min)
        return ms->timeout_ms;
    return (int64_t)ms->timeout_ms +
           (req->wait_ms >= 0 ? req->wait_ms : WAIT_DEFAULT_MS);
}

/* Sends req and reads its reply into rep (which the caller frees). */
static int run(meshsync_t *ms, request_t *req, reply_t *rep)
{
    msgpack_sbuffer sb;
    uint64_t id = ms->next_id++;
    int64_t deadline;
    int rc;

    if (req->has_value) {
        rc = load_value(ms, req);
        if (rc < 0)
            return rc;
    }

    msgpack_sbuffer_init(&sb);
    rc = build_frame(ms, req, id, &sb);
    ms->call_timeout_ms = call_timeout(ms, req);
    deadline = deadline_after(ms->call_timeout_ms);
    if (rc == 0)
        rc = send_all(ms, sb.data, sb.size, deadline);
    msgpack_sbuffer_destroy(&sb);
    if (rc == 0)
        rc = read_reply(ms, id, req->want, deadline, rep);
    return rc;
}

static void reply_init(reply_t *rep)
{
    memset(rep, 0, sizeof(*rep));
    msgpack_unpacked_init(&rep->up);
}

static void request_done(request_t *req, reply_t *rep)
{
    json_decref(req->json);
    req->json = NULL;
    msgpack_unpacked_destroy(&rep->up);
}

/* Runs a request whose reply needs nothing but its version. */
static int call_version(meshsync_t *ms, request_t *req, uint64_t *version)
{
    reply_t rep;
    int rc;

    reply_init(&rep);
    rc = run(ms, req, &rep);
    if (rc == 0 && version != NULL && rep.version != NULL)
        *version = rep.version->via.u64;
    request_done(req, &rep);
    return rc;
}

static int value_to_msgpack(meshsync_t *ms, const msgpack_object *obj,
                            meshsync_value_t *out)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (msgpack_pack_object(&pk, *obj) != 0) {
        msgpack_sbuffer_destroy(&sb);
        return fail(ms, MS_ENOMEM, "out of memory");
    }
    out->len = sb.size;
    out->data = msgpack_sbuffer_release(&sb);
    return 0;
}

static int value_to_json(meshsync_t *ms, const msgpack_object *obj,
                         meshsync_value_t *out)
{
    ms_value_limits_t lim = {SIZE_MAX, MS_VALUE_DEPTH_CAP};
    ms_error_t err = {MS_OK, ""};
    json_t *v = NULL;
    int rc;

    rc = ms_value_from_msgpack(obj, &lim, &v, &err);
    if (rc == MS_ENOMEM)
        return fail(ms, rc, "out of memory");
    if (rc < 0)
        return fail(ms, MS_EPROTO, "reply value has no JSON form: %s", err.msg);

    rc = ms_value_dump(v, &lim, &out->data, &out->len, &err);
    json_decref(v);
    return rc < 0 ? fail_err(ms, rc, &err) : 0;
}

static int call_get(meshsync_t *ms, request_t *req, meshsync_format_t format,
                    meshsync_value_t *out)
{
    reply_t rep;
    int rc;

    if (out == NULL)
        return fail(ms, MS_EINVAL, "no place for the value");
    memset(out, 0, sizeof(*out));
    if (format != MESHSYNC_JSON && format != MESHSYNC_MSGPACK)
        return fail(ms, MS_EINVAL, "unknown value format %d", (int)format);

    reply_init(&rep);
    req->want = WANT_VALUE | WANT_VERSION;
    rc = run(ms, req, &rep);
    if (rc == 0 && format == MESHSYNC_MSGPACK)
        rc = value_to_msgpack(ms, rep.value, out);
    else if (rc == 0)
        rc = value_to_json(ms, rep.value, out);
    if (rc == 0) {
        out->version = rep.version->via.u64;
        out->stale = rep.stale != NULL && rep.stale->via.boolean;
        out->behind =
            !out->stale ? 0
            : rep.behind != NULL && rep.behind->type != MSGPACK_OBJECT_NIL
                ? (int64_t)rep.behind->via.u64
                : -1;
    }
    request_done(req, &rep);
    return rc;
}

static const char *strategy_name(meshsync_strategy_t s)
{
    switch (s) {
    case MESHSYNC_REPLACE:
        return "replace";
    case MESHSYNC_MERGE:
        return "merge";
    case MESHSYNC_DEEP_MERGE:
        return "deepMerge";
    }
    return NULL;
}

static int call_set(meshsync_t *ms, request_t *req, meshsync_format_t format,
                    const char *data, size_t len, meshsync_strategy_t s,
                    uint64_t *version)
{
    req->strategy = strategy_name(s);
    if (req->strategy == NULL)
        return fail(ms, MS_EINVAL, "unknown strategy %d", (int)s);
    req->has_value = 1;
    req->format = format;
    req->data = data;
    req->len = len;
    req->want = WANT_VERSION;
    return call_version(ms, req, version);
}

static int need_id(meshsync_t *ms, const char *id, const char *what)
{
    if (id == NULL)
        return fail(ms, MS_EINVAL, "no %s id given", what);
    return 0;
}

static int status(int rc)
{
    return rc < 0 ? -1 : 0;
}

/* Connects the socket, waiting out a connect interrupted by a signal. */
static int open_socket(meshsync_t *ms, const char *path)
{
    struct sockaddr_un sa;
    size_t n = strlen(path);
    int e;

    memset(&sa, 0, sizeof(sa));
    if (n >= sizeof(sa.sun_path))
        return fail(ms, MS_EIO, "socket path longer than %zu bytes",
                    sizeof(sa.sun_path) - 1);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, n);

    ms->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ms->fd < 0)
        return fail_errno(ms, errno, "socket");
    if (connect(ms->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return 0;
    e = errno;
    if (e == EINTR) {
        socklen_t elen = sizeof(e);

        ms->call_timeout_ms = ms->timeout_ms;
        if (wait_fd(ms, POLLOUT, deadline_after(ms->timeout_ms)) < 0)
            return MS_EIO;
        if (getsockopt(ms->fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
            e = errno;
        if (e == 0)
            return 0;
    }
    return fail_connect(ms, e, path);
}

meshsync_t *meshsync_connect(const char *path)
{
    meshsync_t *ms = calloc(1, sizeof(*ms));

    if (ms == NULL)
        return NULL;
    ms->fd = -1;
    ms->timeout_ms = DEFAULT_TIMEOUT_MS;
    ms->next_id = 1;
    ms_frame_reader_init(&ms->reader, REPLY_MAX);

    if (path == NULL || path[0] == '\0')
        path = getenv("MESHSYNC_SOCKET");
    if (path == NULL || path[0] == '\0')
        path = MESHSYNC_DEFAULT_SOCKET;
    (void)open_socket(ms, path);
    return ms;
}

void meshsync_free(meshsync_t *ms)
{
    if (ms == NULL)
        return;
    if (ms->fd >= 0)
        close(ms->fd);
    ms_frame_reader_free(&ms->reader);
    drop_events(ms);
    free(ms);
}

const char *meshsync_errcode(const meshsync_t *ms)
{
    if (ms == NULL)
        return "internal";
    return ms->failed ? ms->code : NULL;
}

const char *meshsync_errmsg(const meshsync_t *ms)
{
    if (ms == NULL)
        return "out of memory";
    return ms->failed ? ms->msg : "";
}

void meshsync_set_timeout(meshsync_t *ms, int timeout_ms)
{
    if (ms != NULL)
        ms->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}


void meshsync_set_strong(meshsync_t *ms, int strong)
{
    if (ms != NULL)
        ms->strong = strong != 0;
}

int meshsync_ping(meshsync_t *ms)
{
    request_t req = {.op = "ping"};
    int rc = begin_call(ms);

    if (rc == 0)
        rc = call_version(ms, &req, NULL);
    return status(rc);
}

/*
 * The reply map without its id and ok, as JSON: the health fields are the
 * daemon's to extend, so they are handed on rather than picked apart.
 */
static int reply_fields_to_json(meshsync_t *ms, const msgpack_object *root,
                                meshsync_value_t *out)
{
    msgpack_object_kv kv[32];
    msgpack_object map = {.type = MSGPACK_OBJECT_MAP};
    uint32_t n = 0;

    for (uint32_t i = 0; i < root->via.map.size && n < 32; i++) {
        const msgpack_object *k = &root->via.map.ptr[i].key;

        if (!str_is(k, "id") && !str_is(k, "ok"))
            kv[n++] = root->via.map.ptr[i];
    }
    map.via.map.ptr = kv;
    map.via.map.size = n;
    return value_to_json(ms, &map, out);
}


int meshsync_health(meshsync_t *ms, meshsync_value_t *out)
{
    request_t req = {.op = "health"};
    reply_t rep;
    int rc = begin_call(ms);

    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (rc == 0 && out == NULL)
        rc = fail(ms, MS_EINVAL, "no place for the health report");
    if (rc == 0) {
        reply_init(&rep);
        rc = run(ms, &req, &rep);
        if (rc == 0)
            rc = reply_fields_to_json(ms, &rep.up.data, out);
        request_done(&req, &rep);
    }
    return status(rc);
}


int meshsync_hello(meshsync_t *ms, const char *conn)
{
    request_t req = {.op = "hello", .key = "conn", .target = conn};
    int rc = begin_call(ms);

    if (rc == 0)
        rc = need_id(ms, conn, "connection");
    if (rc == 0)
        rc = call_version(ms, &req, NULL);
    return status(rc);
}

static int pack_bind(msgpack_packer *pk, const void *arg)
{
    const int *bind = arg;

    if (pack_str(pk, "bind"))
        return -1;
    return *bind ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

int meshsync_conn_open(meshsync_t *ms, const char *conn, int bind)
{
    request_t req = {.op = "conn.open", .key = "conn", .target = conn};
    int rc = begin_call(ms);

    if (bind >= 0) {
        req.extra_n = 1;
        req.pack_extra = pack_bind;
        req.extra_arg = &bind;
    }
    if (rc == 0 && conn != NULL)
        rc = need_id(ms, conn, "connection");
    if (rc == 0)
        rc = call_version(ms, &req, NULL);
    return status(rc);
}

/* Sets a get up to wait for min_version; wait_ms < 0: daemon default. */
static int want_min(meshsync_t *ms, request_t *req, uint64_t min_version,
                    int wait_ms)
{
    if (wait_ms > WAIT_MAX_MS)
        return fail(ms, MS_EINVAL, "wait of %d ms exceeds %d ms", wait_ms,
                    WAIT_MAX_MS);
    req->has_min = 1;
    req->min_version = min_version;
    req->wait_ms = wait_ms < 0 ? -1 : wait_ms;
    return 0;
}

/* What a conn call and a room call differ in; the rest is shared. */
typedef struct entry_kind_s {
    const char *key; /* the request field naming the id */
    const char *get_op;
    const char *set_op;
    const char *remove_op;
    int need_id; /* a room has no bound default, so NULL is refused */
} entry_kind_t;

static const entry_kind_t CONN = {"conn", "conn.get", "conn.set", "conn.close",
                                  0};
static const entry_kind_t ROOM = {"room", "room.get", "room.set", "room.delete",
                                  1};

static int begin_entry(meshsync_t *ms, const entry_kind_t *kind, const char *id)
{
    int rc = begin_call(ms);

    if (rc == 0 && kind->need_id)
        rc = need_id(ms, id, kind->key);
    return rc;
}

/* Every get; min NULL reads at once, else waits for *min. */
static int entry_get(meshsync_t *ms, const entry_kind_t *kind, const char *id,
                     const uint64_t *min, int wait_ms, meshsync_format_t format,
                     meshsync_value_t *out)
{
    request_t req = {.op = kind->get_op, .key = kind->key, .target = id};
    int rc = begin_entry(ms, kind, id);

    req.strong = ms != NULL && ms->strong;
    if (rc == 0 && min != NULL)
        rc = want_min(ms, &req, *min, wait_ms);
    if (rc == 0)
        rc = call_get(ms, &req, format, out);
    else if (out != NULL)
        memset(out, 0, sizeof(*out));
    return status(rc);
}

static int entry_set(meshsync_t *ms, const entry_kind_t *kind, const char *id,
                     meshsync_format_t format, const char *data, size_t len,
                     meshsync_strategy_t strategy, uint64_t *version)
{
    request_t req = {.op = kind->set_op, .key = kind->key, .target = id};
    int rc = begin_entry(ms, kind, id);

    if (rc == 0)
        rc = call_set(ms, &req, format, data, len, strategy, version);
    return status(rc);
}

static int entry_remove(meshsync_t *ms, const entry_kind_t *kind,
                        const char *id, uint64_t *version)
{
    request_t req = {.op = kind->remove_op,
                     .key = kind->key,
                     .target = id,
                     .want = WANT_VERSION};
    int rc = begin_entry(ms, kind, id);

    if (rc == 0)
        rc = call_version(ms, &req, version);
    return status(rc);
}

int meshsync_conn_get(meshsync_t *ms, const char *conn,
                      meshsync_format_t format, meshsync_value_t *out)
{
    return entry_get(ms, &CONN, conn, NULL, -1, format, out);
}

int meshsync_conn_get_min(meshsync_t *ms, const char *conn,
                          uint64_t min_version, int timeout_ms,
                          meshsync_format_t format, meshsync_value_t *out)
{
    return entry_get(ms, &CONN, conn, &min_version, timeout_ms, format, out);
}

int meshsync_conn_set(meshsync_t *ms, const char *conn,
                      meshsync_format_t format, const char *data, size_t len,
                      meshsync_strategy_t strategy, uint64_t *version)
{
    return entry_set(ms, &CONN, conn, format, data, len, strategy, version);
}

int meshsync_conn_close(meshsync_t *ms, const char *conn, uint64_t *version)
{
    return entry_remove(ms, &CONN, conn, version);
}

int meshsync_room_get(meshsync_t *ms, const char *room,
                      meshsync_format_t format, meshsync_value_t *out)
{
    return entry_get(ms, &ROOM, room, NULL, -1, format, out);
}

int meshsync_room_get_min(meshsync_t *ms, const char *room,
                          uint64_t min_version, int timeout_ms,
                          meshsync_format_t format, meshsync_value_t *out)
{
    return entry_get(ms, &ROOM, room, &min_version, timeout_ms, format, out);
}

int meshsync_room_set(meshsync_t *ms, const char *room,
                      meshsync_format_t format, const char *data, size_t len,
                      meshsync_strategy_t strategy, uint64_t *version)
{
    return entry_set(ms, &ROOM, room, format, data, len, strategy, version);
}

int meshsync_room_delete(meshsync_t *ms, const char *room, uint64_t *version)
{
    return entry_remove(ms, &ROOM, room, version);
}

/* --- bulk reads: list and mget ---------------------------------------- */

/* The fields of a list (after, limit) or an mget (its ids under key). */
typedef struct bulk_args_s {
    const char *after; /* NULL or "": left out */
    size_t limit;      /* 0: left out */
    const char *key;   /* "conns" or "rooms"; NULL for a list */
    const char *const *ids;
    size_t n;
} bulk_args_t;

static int pack_bulk(msgpack_packer *pk, const void *arg)
{
    const bulk_args_t *b = arg;

    if (b->after != NULL && b->after[0] != '\0' &&
        (pack_str(pk, "after") || pack_str(pk, b->after)))
        return -1;
    if (b->limit > 0 &&
        (pack_str(pk, "limit") || msgpack_pack_uint64(pk, b->limit)))
        return -1;
    if (b->key == NULL)
        return 0;
    if (pack_str(pk, b->key) || msgpack_pack_array(pk, (uint32_t)b->n))
        return -1;
    for (size_t i = 0; i < b->n; i++) {
        if (pack_str(pk, b->ids[i]))
            return -1;
    }
    return 0;
}

static void bulk_request(request_t *req, const bulk_args_t *b)
{
    req->extra_n = (b->after != NULL && b->after[0] != '\0') + (b->limit > 0) +
                   (b->key != NULL);
    req->pack_extra = pack_bulk;
    req->extra_arg = b;
}

static int check_format(meshsync_t *ms, meshsync_format_t format)
{
    if (format != MESHSYNC_JSON && format != MESHSYNC_MSGPACK)
        return fail(ms, MS_EINVAL, "unknown value format %d", (int)format);
    return 0;
}

/* A reply value in the format asked for, into data and len of v. */
static int take_value(meshsync_t *ms, const msgpack_object *obj,
                      meshsync_format_t format, meshsync_value_t *v)
{
    if (format == MESHSYNC_MSGPACK)
        return value_to_msgpack(ms, obj, v);
    return value_to_json(ms, obj, v);
}

/* stale and behind, whose types check_reply has checked. */
static void take_stale(const reply_t *rep, int *stale, int64_t *behind)
{
    *stale = rep->stale != NULL && rep->stale->via.boolean;
    if (!*stale)
        *behind = 0;
    else if (rep->behind != NULL && rep->behind->type != MSGPACK_OBJECT_NIL)
        *behind = (int64_t)rep->behind->via.u64;
    else
        *behind = -1;
}

static char *copy_str(const msgpack_object *o)
{
    char *s = malloc(o->via.str.size + 1);

    if (s != NULL) {
        memcpy(s, o->via.str.ptr, o->via.str.size);
        s[o->via.str.size] = '\0';
    }
    return s;
}

/* One [id, value, version] of a list reply. */
static int take_item(meshsync_t *ms, const msgpack_object *o,
                     meshsync_format_t format, meshsync_item_t *item)
{
    const msgpack_object *f = o->via.array.ptr;
    meshsync_value_t v = {0};
    int rc;

    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3 ||
        f[0].type != MSGPACK_OBJECT_STR ||
        f[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(ms, MS_EPROTO, "list item is not [id, value, version]");
    rc = take_value(ms, &f[1], format, &v);
    if (rc < 0)
        return rc;
    item->data = v.data;
    item->len = v.len;
    item->version = f[2].via.u64;
    item->id = copy_str(&f[0]);
    item->id_len = f[0].via.str.size;
    return item->id == NULL ? fail(ms, MS_ENOMEM, "out of memory") : 0;
}

/* next must be nil, or the page's last id: a later call goes on from it. */
static int take_next(meshsync_t *ms, const msgpack_object *next,
                     meshsync_page_t *out)
{
    const meshsync_item_t *last =
        out->count > 0 ? &out->items[out->count - 1] : NULL;

    if (next == NULL || next->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (next->type != MSGPACK_OBJECT_STR || last == NULL ||
        last->id_len != next->via.str.size ||
        memcmp(last->id, next->via.str.ptr, last->id_len) != 0)
        return fail(ms, MS_EPROTO, "list reply's next is not its last id");
    out->next = copy_str(next);
    return out->next == NULL ? fail(ms, MS_ENOMEM, "out of memory") : 0;
}

static int take_page(meshsync_t *ms, const reply_t *rep,
                     meshsync_format_t format, meshsync_page_t *out)
{
    const msgpack_object *items = map_get(&rep->up.data, "items");
    int rc;

    if (items == NULL || items->type != MSGPACK_OBJECT_ARRAY)
        return fail(ms, MS_EPROTO, "list reply without items");
    if (items->via.array.size > 0) {
        out->items = calloc(items->via.array.size, sizeof(*out->items));
        if (out->items == NULL)
            return fail(ms, MS_ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < items->via.array.size; i++) {
        rc = take_item(ms, &items->via.array.ptr[i], format, &out->items[i]);
        out->count++;
        if (rc < 0)
            return rc;
    }
    take_stale(rep, &out->stale, &out->behind);
    return take_next(ms, map_get(&rep->up.data, "next"), out);
}

/* A page of op's list; room names the room for room.members. */
static int entry_list(meshsync_t *ms, const char *op, const char *room,
                      const char *after, size_t limit, meshsync_format_t format,
                      meshsync_page_t *out)
{
    bulk_args_t b = {.after = after, .limit = limit};
    request_t req = {.op = op, .key = "room", .target = room};
    reply_t rep;
    int rc = begin_call(ms);

    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (rc == 0 && out == NULL)
        rc = fail(ms, MS_EINVAL, "no place for the page");
    if (rc == 0 && room != NULL)
        rc = need_id(ms, room, "room");
    if (rc == 0)
        rc = check_format(ms, format);
    if (rc < 0)
        return status(rc);

    bulk_request(&req, &b);
    reply_init(&rep);
    rc = run(ms, &req, &rep);
    if (rc == 0)
        rc = take_page(ms, &rep, format, out);
    request_done(&req, &rep);
    if (rc < 0)
        meshsync_page_free(out);
    return status(rc);
}

int meshsync_conn_list(meshsync_t *ms, const char *after, size_t limit,
                       meshsync_format_t format, meshsync_page_t *out)
{
    return entry_list(ms, "conn.list", NULL, after, limit, format, out);
}

int meshsync_room_list(meshsync_t *ms, const char *after, size_t limit,
                       meshsync_format_t format, meshsync_page_t *out)
{
    return entry_list(ms, "room.list", NULL, after, limit, format, out);
}

int meshsync_room_members(meshsync_t *ms, const char *room, const char *after,
                          size_t limit, meshsync_format_t format,
                          meshsync_page_t *out)
{
    if (room == NULL) {
        if (out != NULL)
            memset(out, 0, sizeof(*out));
        return status(fail(ms, MS_EINVAL, "no room given"));
    }
    return entry_list(ms, "room.members", room, after, limit, format, out);
}

static int pack_conn(msgpack_packer *pk, const void *arg)
{
    return pack_str(pk, "conn") || pack_str(pk, arg) ? -1 : 0;
}

/* room.join or room.leave of conn (NULL: the bound connection). */
static int membership(meshsync_t *ms, const char *op, const char *room,
                      const char *conn, uint64_t *version)
{
    request_t req = {.op = op, .key = "room", .target = room};
    int rc = begin_call(ms);

    if (conn != NULL) {
        req.extra_n = 1;
        req.pack_extra = pack_conn;
        req.extra_arg = conn;
    }
    if (rc == 0)
        rc = need_id(ms, room, "room");
    if (rc == 0 && conn != NULL)
        rc = need_id(ms, conn, "connection");
    if (rc == 0)
        rc = call_version(ms, &req, version);
    return status(rc);
}

int meshsync_room_join(meshsync_t *ms, const char *room, const char *conn,
                       uint64_t *version)
{
    return membership(ms, "room.join", room, conn, version);
}

int meshsync_room_leave(meshsync_t *ms, const char *room, const char *conn,
                        uint64_t *version)
{
    return membership(ms, "room.leave", room, conn, version);
}

void meshsync_page_free(meshsync_page_t *page)
{
    if (page == NULL)
        return;
    for (size_t i = 0; i < page->count; i++) {
        free(page->items[i].id);
        free(page->items[i].data);
    }
    free(page->items);
    free(page->next);
    memset(page, 0, sizeof(*page));
}

static int check_ids(meshsync_t *ms, const char *const *ids, size_t n,
                     const char *what, const meshsync_value_t *out)
{
    if (n > 0 && out == NULL)
        return fail(ms, MS_EINVAL, "no place for the values");
    if (n > 0 && ids == NULL)
        return fail(ms, MS_EINVAL, "no %s ids given", what);
    if (n > UINT32_MAX)
        return fail(ms, MS_EINVAL, "too many ids");
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == NULL)
            return fail(ms, MS_EINVAL, "no %s id given at %zu", what, i);
    }
    return 0;
}

/* values[i] and versions[i] answer the i-th id, in the format asked for. */
static int take_values(meshsync_t *ms, const reply_t *rep, size_t n,
                       meshsync_format_t format, meshsync_value_t *out)
{
    const msgpack_object *values = map_get(&rep->up.data, "values");
    const msgpack_object *versions = map_get(&rep->up.data, "versions");
    int stale;
    int64_t behind;
    int rc;

    if (values == NULL || values->type != MSGPACK_OBJECT_ARRAY ||
        values->via.array.size != n || versions == NULL ||
        versions->type != MSGPACK_OBJECT_ARRAY || versions->via.array.size != n)
        return fail(ms, MS_EPROTO,
                    "mget reply without a value and a version for each id");
    take_stale(rep, &stale, &behind);
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *version = &versions->via.array.ptr[i];

        if (version->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return fail(ms, MS_EPROTO, "mget reply version is not unsigned");
        rc = take_value(ms, &values->via.array.ptr[i], format, &out[i]);
        if (rc < 0)
            return rc;
        out[i].version = version->via.u64;
        out[i].stale = stale;
        out[i].behind = behind;
    }
    return 0;
}

static int entry_mget(meshsync_t *ms, const char *op, const char *key,
                      const char *what, const char *const *ids, size_t n,
                      meshsync_format_t format, meshsync_value_t *out)
{
    bulk_args_t b = {.key = key, .ids = ids, .n = n};
    request_t req = {.op = op};
    reply_t rep;
    int rc = begin_call(ms);

    if (out != NULL && n > 0)
        memset(out, 0, n * sizeof(*out));
    if (rc == 0)
        rc = check_ids(ms, ids, n, what, out);
    if (rc == 0)
        rc = check_format(ms, format);
    if (rc < 0)
        return status(rc);

    bulk_request(&req, &b);
    reply_init(&rep);
    rc = run(ms, &req, &rep);
    if (rc == 0)
        rc = take_values(ms, &rep, n, format, out);
    request_done(&req, &rep);
    if (rc < 0)
        meshsync_values_free(out, n);
    return status(rc);
}

int meshsync_conn_mget(meshsync_t *ms, const char *const *conns, size_t n,
                       meshsync_format_t format, meshsync_value_t *out)
{
    return entry_mget(ms, "conn.mget", "conns", "connection", conns, n, format,
                      out);
}

int meshsync_room_mget(meshsync_t *ms, const char *const *rooms, size_t n,
                       meshsync_format_t format, meshsync_value_t *out)
{
    return entry_mget(ms, "room.mget", "rooms", "room", rooms, n, format, out);
}

void meshsync_values_free(meshsync_value_t *values, size_t n)
{
    if (values == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        meshsync_value_free(&values[i]);
}

void meshsync_value_free(meshsync_value_t *v)
{
    if (v == NULL)
        return;
    free(v->data);
    memset(v, 0, sizeof(*v));
}

int meshsync_strategy_parse(const char *s, meshsync_strategy_t *out)
{
    static const meshsync_strategy_t all[] = {MESHSYNC_REPLACE, MESHSYNC_MERGE,
                                              MESHSYNC_DEEP_MERGE};
    size_t i;

    if (s == NULL || out == NULL)
        return -1;
    for (i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(s, strategy_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    }
    return -1;
}

/* --- watch: pushed change events ------------------------------------- */

/*
 * Events kept for meshsync_next_event(). Past either bound the queue is
 * replaced by one reset event, as the sidecar does for a watcher it
 * cannot keep up with, so the library never grows without bound.
 */
#define EVENTS_MAX      65536
#define EVENT_BYTES_MAX (64 * 1024 * 1024)

/* The most ids one watch or unwatch may name (the daemon's bound). */
#define WATCH_IDS_MAX 10000

typedef struct event_node {
    struct event_node *next;
    meshsync_event_t ev;
} event_node_t;

static void drop_events(meshsync_t *ms)
{
    event_node_t *n;

    while ((n = ms->events) != NULL) {
        ms->events = n->next;
        meshsync_event_free(&n->ev);
        free(n);
    }
    ms->events_tail = NULL;
    ms->nevents = 0;
    ms->event_bytes = 0;
}

/* Appends n to the queue (taking it), collapsing the queue when full. */
static void enqueue_event(meshsync_t *ms, event_node_t *n)
{
    size_t bytes = n->ev.len + n->ev.id_len;

    if (ms->nevents >= EVENTS_MAX ||
        ms->event_bytes + bytes > EVENT_BYTES_MAX) {
        uint64_t version = n->ev.version;

        drop_events(ms);
        meshsync_event_free(&n->ev);
        n->ev.reset = 1;
        n->ev.version = version;
        bytes = 0;
    }
    n->next = NULL;
    if (ms->events_tail != NULL)
        ms->events_tail->next = n;
    else
        ms->events = n;
    ms->events_tail = n;
    ms->nevents++;
    ms->event_bytes += bytes;
}

/* Moves the oldest queued event into *ev: 1, or 0 when none is queued. */
static int pop_event(meshsync_t *ms, meshsync_event_t *ev)
{
    event_node_t *n = ms->events;

    if (n == NULL)
        return 0;
    ms->events = n->next;
    if (ms->events == NULL)
        ms->events_tail = NULL;
    ms->nevents--;
    ms->event_bytes -= n->ev.reset ? 0 : n->ev.len + n->ev.id_len;
    *ev = n->ev;
    free(n);
    return 1;
}

/* {push: "change", kind, id, value, version} into ev. */
static int take_change(meshsync_t *ms, const msgpack_object *map,
                       meshsync_event_t *ev)
{
    const msgpack_object *kind = map_get(map, "kind");
    const msgpack_object *id = map_get(map, "id");
    const msgpack_object *value = map_get(map, "value");
    meshsync_value_t v = {0};
    int rc;

    if (kind == NULL || id == NULL || id->type != MSGPACK_OBJECT_STR ||
        value == NULL || !(str_is(kind, "conn") || str_is(kind, "room")))
        return fail(ms, MS_EPROTO, "change push without kind, id or value");
    ev->kind = str_is(kind, "room") ? MESHSYNC_ROOM : MESHSYNC_CONN;
    rc = value_to_json(ms, value, &v);
    if (rc < 0)
        return rc;
    ev->data = v.data;
    ev->len = v.len;
    ev->id = strndup(id->via.str.ptr, id->via.str.size);
    ev->id_len = id->via.str.size;
    return ev->id == NULL ? fail(ms, MS_ENOMEM, "out of memory") : 0;
}

/*
 * Queues the push frame map (push names its kind). Pushes of kinds this
 * library does not know are skipped, so newer daemons may add some.
 */
static int queue_push(meshsync_t *ms, const msgpack_object *map,
                      const msgpack_object *push)
{
    const msgpack_object *version = map_get(map, "version");
    event_node_t *n;
    int rc = 0;

    if (!str_is(push, "change") && !str_is(push, "reset"))
        return 0;
    if (version == NULL || version->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(ms, MS_EPROTO, "push without a version");
    n = calloc(1, sizeof(*n));
    if (n == NULL)
        return fail(ms, MS_ENOMEM, "out of memory");
    n->ev.version = version->via.u64;
    n->ev.reset = str_is(push, "reset");
    if (!n->ev.reset)
        rc = take_change(ms, map, &n->ev);
    if (rc < 0) {
        meshsync_event_free(&n->ev);
        free(n);
        return rc;
    }
    enqueue_event(ms, n);
    return 0;
}

/*
 * 1 when the frame was a push (queued, or skipped), 0 when it is not one
 * (a reply), or an error. A push that cannot be kept (out of memory)
 * closes the connection: a lost event must not pass unnoticed.
 */
static int take_push(meshsync_t *ms, const char *body, size_t len)
{
    const msgpack_object *push = NULL;
    msgpack_unpacked up;
    uint64_t id;
    size_t off = 0;
    int rc;

    /* Replies carry their request's id as an unsigned integer. */
    if (ms_msgpack_map_uint(body, len, "id", &id) == 1 ||
        ms_msgpack_check(body, len, MS_VALUE_DEPTH_CAP + 1, NULL) < 0)
        return 0;
    msgpack_unpacked_init(&up);
    rc = msgpack_unpack_next(&up, body, len, &off);
    if (rc == MSGPACK_UNPACK_SUCCESS && up.data.type == MSGPACK_OBJECT_MAP)
        push = map_get(&up.data, "push");
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        rc = fail(ms, MS_ENOMEM, "out of memory");
    else if (push == NULL)
        rc = 0;
    else if ((rc = queue_push(ms, &up.data, push)) == 0)
        rc = 1;
    msgpack_unpacked_destroy(&up);
    if (rc == MS_ENOMEM)
        disconnect(ms);
    return rc;
}

/* The ids of one list, packed under key when there are any. */
static int pack_ids(msgpack_packer *pk, const char *key, const char *const *ids,
                    size_t n)
{
    if (n == 0)
        return 0;
    if (pack_str(pk, key) || msgpack_pack_array(pk, (uint32_t)n))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (pack_str(pk, ids[i]))
            return -1;
    }
    return 0;
}

typedef struct watch_args_s {
    const char *const *rooms;
    size_t nrooms;
    const char *const *conns;
    size_t nconns;
    int all;
} watch_args_t;

static int pack_watch(msgpack_packer *pk, const void *arg)
{
    const watch_args_t *a = arg;

    if (pack_ids(pk, "rooms", a->rooms, a->nrooms) ||
        pack_ids(pk, "conns", a->conns, a->nconns))
        return -1;
    if (a->all && (pack_str(pk, "all") || msgpack_pack_true(pk)))
        return -1;
    return 0;
}

static int check_watch_ids(meshsync_t *ms, const char *const *ids, size_t n,
                           const char *what)
{
    if (n > WATCH_IDS_MAX)
        return fail(ms, MS_ETOOLARGE, "more than %d ids in one request",
                    WATCH_IDS_MAX);
    if (n > 0 && ids == NULL)
        return fail(ms, MS_EINVAL, "no %s ids given", what);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == NULL)
            return fail(ms, MS_EINVAL, "no %s id given at %zu", what, i);
    }
    return 0;
}

static int watch_call(meshsync_t *ms, const char *op, const watch_args_t *a,
                      uint64_t *version)
{
    request_t req = {.op = op, .want = WANT_VERSION};
    int rc = begin_call(ms);

    if (rc == 0)
        rc = check_watch_ids(ms, a->rooms, a->nrooms, "room");
    if (rc == 0)
        rc = check_watch_ids(ms, a->conns, a->nconns, "connection");
    if (rc == 0 && a->nrooms + a->nconns > WATCH_IDS_MAX)
        rc = fail(ms, MS_ETOOLARGE, "more than %d ids in one request",
                  WATCH_IDS_MAX);
    if (rc < 0)
        return status(rc);
    req.extra_n = (a->nrooms > 0) + (a->nconns > 0) + (a->all != 0);
    req.pack_extra = pack_watch;
    req.extra_arg = a;
    return status(call_version(ms, &req, version));
}

int meshsync_watch(meshsync_t *ms, const char *const *rooms, size_t nrooms,
                   const char *const *conns, size_t nconns, int all,
                   uint64_t *version)
{
    watch_args_t a = {rooms, nrooms, conns, nconns, all};

    return watch_call(ms, "watch", &a, version);
}

int meshsync_unwatch(meshsync_t *ms, const char *const *rooms, size_t nrooms,
                     const char *const *conns, size_t nconns, int all,
                     uint64_t *version)
{
    watch_args_t a = {rooms, nrooms, conns, nconns, all};

    return watch_call(ms, "unwatch", &a, version);
}

/* Takes what the socket holds without waiting: 0, or an error. */
static int read_available(meshsync_t *ms)
{
    int rc = read_once(ms);

    return rc < 0 ? rc : 0;
}

/* Reads frames until an event is queued: 1, 0 at the deadline, or error. */
static int wait_event(meshsync_t *ms, int64_t deadline)
{
    const char *body;
    size_t len;
    int rc;

    while (ms->events == NULL) {
        rc = ms_frame_reader_next(&ms->reader, &body, &len);
        if (rc < 0)
            return fail(ms, MS_EPROTO, "frame longer than %d bytes", REPLY_MAX);
        if (rc == 1) {
            rc = take_push(ms, body, len);
            if (rc == 0)
                return fail(ms, MS_EPROTO, "a reply no request waits for");
            if (rc < 0)
                return rc;
            continue;
        }
        rc = poll_fd(ms, POLLIN, deadline);
        if (rc <= 0)
            return rc;
        rc = read_available(ms);
        if (rc < 0)
            return rc;
    }
    return 1;
}

int meshsync_next_event(meshsync_t *ms, meshsync_event_t *ev, int timeout_ms)
{
    int rc;

    if (ev != NULL)
        memset(ev, 0, sizeof(*ev));
    if (ms == NULL)
        return -1;

    /* Events queued before a failure are still handed out. */
    if (ev != NULL && pop_event(ms, ev) == 1) {
        if (!ms->dead)
            ms->failed = 0;
        return 1;
    }
    rc = begin_call(ms);
    if (rc == 0 && ev == NULL)
        rc = fail(ms, MS_EINVAL, "no place for the event");
    if (rc == 0)
        rc = wait_event(ms, timeout_ms >= 0 ? now_ms() + timeout_ms : -1);
    if (rc < 0)
        return -1;
    return rc == 1 ? pop_event(ms, ev) : 0;
}

void meshsync_event_free(meshsync_event_t *ev)
{
    if (ev == NULL)
        return;
    free(ev->id);
    free(ev->data);
    memset(ev, 0, sizeof(*ev));
}
