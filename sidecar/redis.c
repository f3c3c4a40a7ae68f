/*
 * redis.c - the daemon's two Redis links (see redis.h): URL parsing,
 * connecting, the handshakes (AUTH, SELECT, SCRIPT LOAD, SUBSCRIBE),
 * reconnecting with backoff, commands and scripts with the NOSCRIPT
 * fallback, and closing.
 *
 * Entry points: ms_redis_url_check(), ms_redis_new(), ms_redis_command(),
 * ms_redis_script(), ms_redis_close(). Loop thread only.
 *
 * hiredis 0.14 rules this file lives by:
 * - A context is gone when its disconnect callback returns (connected
 *   contexts), when the connect callback reports a failure, or when
 *   redisAsyncFree() returns for a context that never connected.
 * - redisAsyncFree() inside a reply callback only marks the context; it
 *   is freed when the callback returns. Inside the connect callback it
 *   would free the context under hiredis's feet, so nothing there frees.
 * - Freeing runs every pending reply callback with a NULL reply, then the
 *   disconnect callback.
 * - The libuv adapter (hiredis_uv.c) closes its uv_poll_t itself and
 *   frees it in the close callback, so the loop outlives the context by
 *   one iteration.
 */
#include "redis.h"

#include <arpa/inet.h>
#include <assert.h>
#include <hiredis/async.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/un.h>

#include "alloc.h"
#include "hiredis_uv.h"
#include "log.h"

extern const char ms_script_write[];
extern const char ms_script_load[];
extern const char ms_script_sync[];
extern const char ms_script_read[];
extern const char ms_script_scrub[];
extern const char ms_script_registry[];
extern const char ms_script_members[];

static const char *const script_body[MS_SCRIPT_COUNT] = {
    [MS_SCRIPT_WRITE] = ms_script_write,
    [MS_SCRIPT_LOAD] = ms_script_load,
    [MS_SCRIPT_SYNC] = ms_script_sync,
    [MS_SCRIPT_READ] = ms_script_read,
    [MS_SCRIPT_SCRUB] = ms_script_scrub,
    [MS_SCRIPT_REGISTRY] = ms_script_registry,
    [MS_SCRIPT_MEMBERS] = ms_script_members,
};

/* Covers connect(2) and the handshake; a silent host must not stall us. */
#define CONNECT_TIMEOUT_MS 10000

#define DEFAULT_PORT            6379
#define DEFAULT_BACKOFF_MIN     100
#define DEFAULT_COMMAND_TIMEOUT 5000
#define DEFAULT_BACKOFF_MAX     5000
#define HOST_MAX                253
#define SHA_LEN                 40
#define REASON_MAX              160

#define SUN_PATH_MAX sizeof(((struct sockaddr_un *)0)->sun_path)

typedef struct redis_addr_s {
    bool is_unix;
    char where[HOST_MAX + 1]; /* socket path, or host without brackets */
    int port;
    int db;
} redis_addr_t;

typedef enum {
    LINK_IDLE,       /* no context; the timer may be due to reconnect */
    LINK_CONNECTING, /* connect(2) in progress */
    LINK_HANDSHAKE,  /* connected, going through the handshake steps */
    LINK_UP,
    LINK_DROPPING /* lost; waiting for hiredis to let go of it */
} link_state_t;

/* Handshake steps; the command link loads one script per step from
 * STEP_LAST on, the subscriber link subscribes there. */
enum { STEP_AUTH, STEP_SELECT, STEP_LAST };

typedef struct link_s {
    ms_redis_t *r;
    const char *name;      /* "cmd" or "sub", for logs */
    redisAsyncContext *ac; /* NULL when there is no context */
    link_state_t state;
    int step;         /* next handshake step */
    unsigned attempt; /* failed connects since the link was last up */
    bool failing;     /* a connect failure was logged at warn */
    bool timer_closed;
    uv_timer_t timer; /* reconnect delay, or connect timeout */
} link_t;

struct ms_redis_s {
    uv_loop_t *loop;
    redis_addr_t addr;
    char *password;
    char *channel;
    char *ks_channel;     /* NULL, or a keyspace channel to subscribe to */
    char *ks_patterns[2]; /* NULL, or keyspace patterns to subscribe to */
    unsigned backoff_min;
    unsigned backoff_max;
    ms_redis_callbacks_t cb;
    link_t cmd;
    link_t sub;
    char sha[MS_SCRIPT_COUNT][SHA_LEN + 1];
    uint64_t rng;
    bool live;
    bool closing;
    unsigned command_timeout; /* ms a command may wait for its reply */
    bool timed_out;           /* the cmd link is being cut for that */
    bool watchdog_closed;
    uv_timer_t watchdog;              /* looks for commands past the timeout */
    TAILQ_HEAD(, request_s) inflight; /* commands in flight, oldest first */
};

/* A command in flight. Scripts keep their arguments for the EVAL retry. */
typedef struct request_s {
    ms_redis_t *r;
    TAILQ_ENTRY(request_s) link; /* in r's in-flight list */
    uint64_t sent;               /* uv_now() when sent */
    ms_redis_reply_cb cb;
    void *arg;
    int script;   /* ms_script_t, or -1 for a plain command */
    bool retried; /* already went again as EVAL */
    int argc;
    const char **argv; /* points into this allocation */
    size_t *argvlen;
    char nkeys[16];
} request_t;

static void link_connect(link_t *l);
static void link_handshake(link_t *l);
static void link_timer_cb(uv_timer_t *t);
static void watchdog_cb(uv_timer_t *t);


/* --- URLs ------------------------------------------------------------- */

/* Parses n decimal digits into *out; false if empty, not digits or > max. */
static bool parse_uint(const char *s, size_t n, unsigned long max,
                       unsigned long *out)
{
    unsigned long v = 0;

    if (n == 0 || n > 10)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}


static int parse_unix(const char *p, redis_addr_t *a, ms_error_t *err)
{
    const char *q = strchr(p, '?');
    size_t n = q ? (size_t)(q - p) : strlen(p);
    unsigned long db = 0;

    if (n < 2 || p[0] != '/')
        return ms_error_set(err, MS_EINVAL,
                            "unix:// URL needs an absolute socket path, "
                            "as in unix:///run/redis.sock");
    if (n >= SUN_PATH_MAX || n >= sizeof(a->where))
        return ms_error_set(err, MS_EINVAL, "unix:// socket path too long");
    if (q != NULL && (strncmp(q, "?db=", 4) != 0 ||
                      !parse_uint(q + 4, strlen(q + 4), INT32_MAX, &db)))
        return ms_error_set(err, MS_EINVAL,
                            "unix:// URL accepts only ?db=<number>");

    a->is_unix = true;
    memcpy(a->where, p, n);
    a->where[n] = '\0';
    a->port = 0;
    a->db = (int)db;
    return 0;
}


/* Takes the host of a redis:// URL: a name, IPv4 or [IPv6]; returns the
 * rest of the URL, or NULL. */
static const char *parse_host(const char *p, redis_addr_t *a)
{
    const char *end;
    size_t n;

    if (p[0] == '[') {
        struct in6_addr in6;

        end = strchr(p, ']');
        n = end ? (size_t)(end - p - 1) : 0;
        if (n == 0 || n >= sizeof(a->where))
            return NULL;
        memcpy(a->where, p + 1, n);
        a->where[n] = '\0';
        return inet_pton(AF_INET6, a->where, &in6) == 1 ? end + 1 : NULL;
    }

    n = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                  "0123456789.-_");
    if (n == 0 || n > HOST_MAX)
        return NULL;
    memcpy(a->where, p, n);
    a->where[n] = '\0';
    return p + n;
}


static int parse_tcp(const char *p, redis_addr_t *a, ms_error_t *err)
{
    unsigned long port = DEFAULT_PORT, db = 0;
    size_t n;

    /* Never echo the URL: it could hold a password by mistake. */
    if (strchr(p, '@') != NULL)
        return ms_error_set(err, MS_EINVAL,
                            "redis URL must not hold credentials; give the "
                            "password separately");
    p = parse_host(p, a);
    if (p == NULL)
        return ms_error_set(err, MS_EINVAL,
                            "redis URL has no valid host (a name, an IPv4 "
                            "address or an [IPv6] address)");
    if (*p == ':') {
        n = strcspn(p + 1, "/");
        if (!parse_uint(p + 1, n, 65535, &port) || port == 0)
            return ms_error_set(err, MS_EINVAL,
                                "redis URL port must be 1 to 65535");
        p += 1 + n;
    }
    if (*p == '/' && p[1] != '\0' &&
        !parse_uint(p + 1, strlen(p + 1), INT32_MAX, &db))
        return ms_error_set(err, MS_EINVAL,
                            "redis URL database must be a number");
    if (*p != '\0' && *p != '/')
        return ms_error_set(err, MS_EINVAL,
                            "redis URL must be redis://host[:port][/db]");

    a->is_unix = false;
    a->port = (int)port;
    a->db = (int)db;
    return 0;
}


static int parse_url(const char *url, redis_addr_t *a, ms_error_t *err)
{
    memset(a, 0, sizeof(*a));
    if (url != NULL && strncmp(url, "unix://", 7) == 0)
        return parse_unix(url + 7, a, err);
    if (url != NULL && strncmp(url, "redis://", 8) == 0)
        return parse_tcp(url + 8, a, err);
    return ms_error_set(err, MS_EINVAL,
                        "redis URL must be redis://host[:port][/db] or "
                        "unix:///path[?db=N]");
}


int ms_redis_url_check(const char *url, ms_error_t *err)
{
    redis_addr_t a;
    int rc = parse_url(url, &a, err);

    return rc < 0 ? rc : a.db;
}


/* --- link state ------------------------------------------------------- */

/* Makes an error text from hiredis or Redis fit a quoted log field. */
static void clean_reason(const char *in, char *out, size_t size)
{
    size_t n = 0;

    for (; in != NULL && *in != '\0' && n + 1 < size; in++) {
        unsigned char c = (unsigned char)*in;

        out[n++] =
            (c < 0x20 || c == 0x7f || c == '"' || c == '\\') ? '\'' : (char)c;
    }
    out[n] = '\0';
    if (n == 0)
        snprintf(out, size, "closed");
}


/* The address as logs show it: unix:/path, host:port or [v6]:port. */
static const char *addr_text(const redis_addr_t *a, char *buf, size_t size)
{
    if (a->is_unix)
        snprintf(buf, size, "unix:%s", a->where);
    else if (strchr(a->where, ':') != NULL)
        snprintf(buf, size, "[%s]:%d", a->where, a->port);
    else
        snprintf(buf, size, "%s:%d", a->where, a->port);
    return buf;
}


static void link_log_failure(link_t *l, const char *reason)
{
    char why[REASON_MAX], addr[SUN_PATH_MAX + HOST_MAX + 16];

    /* A server that stays away is reported once, not at every attempt. */
    clean_reason(reason, why, sizeof(why));
    ms_log(l->failing ? MS_LOG_DEBUG : MS_LOG_WARN, "redis connect failed",
           "link=%s addr=%s reason=\"%s\" retrying=yes", l->name,
           addr_text(&l->r->addr, addr, sizeof(addr)), why);
    l->failing = true;
}


static void redis_update_live(ms_redis_t *r)
{
    bool live =
        !r->closing && r->cmd.state == LINK_UP && r->sub.state == LINK_UP;

    if (live == r->live)
        return;
    r->live = live;
    if (r->cb.on_state != NULL)
        r->cb.on_state(r->cb.arg, live);
}


/* Frees r once it is closing and owns neither a context nor a handle. */
static void redis_maybe_free(ms_redis_t *r)
{
    if (!r->closing || !r->cmd.timer_closed || !r->sub.timer_closed ||
        !r->watchdog_closed || r->cmd.ac != NULL || r->sub.ac != NULL)
        return;

    if (r->password != NULL) {
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
    }
    free(r->channel);
    free(r->ks_channel);
    free(r->ks_patterns[0]);
    free(r->ks_patterns[1]);
    free(r);
}


static void link_up(link_t *l)
{
    ms_redis_t *r = l->r;
    char addr[SUN_PATH_MAX + HOST_MAX + 16];

    l->state = LINK_UP;
    l->attempt = 0;
    l->failing = false;
    uv_timer_stop(&l->timer);
    ms_log_info("redis connected", "link=%s addr=%s", l->name,
                addr_text(&r->addr, addr, sizeof(addr)));
    redis_update_live(r);
}


/* Marks the link as lost (once per connection) and logs why. */
static void link_lost(link_t *l, const char *reason)
{
    ms_redis_t *r = l->r;
    char why[REASON_MAX];

    if (l->state == LINK_IDLE || l->state == LINK_DROPPING)
        return;

    if (!r->closing && l->state == LINK_UP) {
        clean_reason(reason, why, sizeof(why));
        ms_log_warn("redis disconnected", "link=%s reason=\"%s\"", l->name,
                    why);
    } else if (!r->closing) {
        link_log_failure(l, reason);
    }
    l->state = LINK_DROPPING;
    uv_timer_stop(&l->timer);
    redis_update_live(r);
}


/* Full jitter: uniform in [0, min(max, min * 2^attempt)]. */
static uint64_t link_backoff(link_t *l)
{
    ms_redis_t *r = l->r;
    uint64_t cap = r->backoff_min;

    for (unsigned i = 0; i < l->attempt && cap < r->backoff_max; i++)
        cap *= 2;
    if (cap > r->backoff_max)
        cap = r->backoff_max;
    if (l->attempt < 32)
        l->attempt++;

    /* xorshift64: no need for more than spreading reconnects apart. */
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return r->rng % (cap + 1);
}


/* The context is gone: schedule the next connect, or finish closing. */
static void link_retry(link_t *l)
{
    ms_redis_t *r = l->r;

    if (r->closing) {
        redis_maybe_free(r);
        return;
    }
    l->state = LINK_IDLE;
    uv_timer_start(&l->timer, link_timer_cb, link_backoff(l), 0);
}


/*
 * Gives up a connection that never came up (a handshake error or a
 * timeout), so no on_state() call can re-enter here. Never called from
 * the connect callback; from a reply callback the free is deferred until
 * that callback returns.
 */
static void link_drop(link_t *l, const char *reason)
{
    redisAsyncContext *ac = l->ac;

    assert(l->state == LINK_CONNECTING || l->state == LINK_HANDSHAKE);
    link_lost(l, reason);
    if (ac->c.flags & REDIS_CONNECTED) {
        /* disconnect_cb follows, at once or after the current callback. */
        redisAsyncFree(ac);
        return;
    }
    l->ac = NULL;
    redisAsyncFree(ac);
    link_retry(l);
}


static void link_timer_cb(uv_timer_t *t)
{
    link_t *l = t->data;

    if (l->state == LINK_IDLE)
        link_connect(l);
    else if (l->state == LINK_CONNECTING || l->state == LINK_HANDSHAKE)
        link_drop(l, "connect timed out");
}


static void link_timer_close_cb(uv_handle_t *h)
{
    link_t *l = h->data;

    l->timer_closed = true;
    redis_maybe_free(l->r);
}


/* --- hiredis callbacks ------------------------------------------------ */

static void connect_cb(const redisAsyncContext *ac, int status)
{
    link_t *l = ac->data;

    if (status != REDIS_OK) {
        /* hiredis frees the context as soon as this returns. */
        l->ac = NULL;
        link_lost(l, ac->c.errstr);
        link_retry(l);
        return;
    }
    l->state = LINK_HANDSHAKE;
    l->step = STEP_AUTH;
    link_handshake(l);
}


static void disconnect_cb(const redisAsyncContext *ac, int status)
{
    link_t *l = ac->data;

    (void)status;
    if (l == &l->r->cmd)
        l->r->timed_out = false;
    l->ac = NULL;
    link_lost(l, ac->c.errstr);
    link_retry(l);
}


static void handshake_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    link_t *l = privdata;
    redisReply *rep = reply;
    int script = l->step - 1 - STEP_LAST;

    if (rep == NULL) {
        link_lost(l, ac->c.errstr);
        return;
    }

    /* ms_redis_close() may have come first in this batch of replies. */
    if (l->state != LINK_HANDSHAKE)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        link_drop(l, rep->str);
        return;
    }

    if (l == &l->r->cmd && script >= 0) {
        if (rep->type != REDIS_REPLY_STRING || rep->len != SHA_LEN) {
            link_drop(l, "unexpected reply to SCRIPT LOAD");
            return;
        }
        memcpy(l->r->sha[script], rep->str, SHA_LEN);
        l->r->sha[script][SHA_LEN] = '\0';
    }
    link_handshake(l);
}


/* How many subscriptions the subscriber link makes: channels, patterns. */
static long long sub_count(const ms_redis_t *r)
{
    return 1 + (r->ks_channel != NULL) + (r->ks_patterns[0] != NULL) +
           (r->ks_patterns[1] != NULL);
}


/*
 * Subscription confirmations, and messages on the change channel or the
 * keyspace channels. The link is up once Redis has confirmed them all.
 */
static void sub_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    link_t *l = privdata;
    ms_redis_t *r = l->r;
    redisReply *rep = reply;
    const redisReply *ch, *msg;
    const char *kind;

    if (rep == NULL) {
        link_lost(l, ac->c.errstr);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return;

    kind = rep->element[0]->str;
    if (strcasecmp(kind, "subscribe") == 0 ||
        strcasecmp(kind, "psubscribe") == 0) {
        if (l->state == LINK_HANDSHAKE &&
            rep->element[2]->type == REDIS_REPLY_INTEGER &&
            rep->element[2]->integer == sub_count(r))
            link_up(l);
        return;
    }

    /* message: [kind, channel, payload]; pmessage: [kind, pattern, ...]. */
    if (strcasecmp(kind, "message") == 0) {
        ch = rep->element[1];
        msg = rep->element[2];
    } else if (strcasecmp(kind, "pmessage") == 0 && rep->elements == 4) {
        ch = rep->element[2];
        msg = rep->element[3];
    } else {
        return;
    }
    if (!r->closing && ch->type == REDIS_REPLY_STRING &&
        msg->type == REDIS_REPLY_STRING && r->cb.on_message != NULL)
        r->cb.on_message(r->cb.arg, ch->str, ch->len, msg->str, msg->len);
}


/* --- connecting ------------------------------------------------------- */

/*
 * Sends a command on a live context. hiredis refuses only when the
 * context is going away (the caller's business) or memory ran out.
 */
/* Appends n in decimal and "\r\n" at p; returns the end. */
static char *put_count(char *p, size_t n)
{
    char digits[24];
    int k = 0;

    do {
        digits[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (k > 0)
        *p++ = digits[--k];
    *p++ = '\r';
    *p++ = '\n';
    return p;
}


/*
 * Encodes a command in RESP (*argc, then $len and the bytes of each
 * argument) into one buffer the caller frees. hiredis's own formatters
 * cost 13,000 (sds) and 17,000 (printf) instructions for a write's 18
 * arguments, more than the rest of the write's path; this one is sized
 * in one pass and written in another.
 */
static char *format_command(int argc, const char **argv, const size_t *lens,
                            size_t *len)
{
    size_t need = 16 + 1;
    char *buf, *p;

    for (int i = 0; i < argc; i++)
        need += 24 + lens[i] + 2;
    buf = ms_malloc(need);
    p = buf;
    *p++ = '*';
    p = put_count(p, (size_t)argc);
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p = put_count(p, lens[i]);
        memcpy(p, argv[i], lens[i]);
        p += lens[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    *len = (size_t)(p - buf);

    /* hiredis reads the command name with strchr(): NUL-terminated. */
    *p = '\0';
    return buf;
}


static bool link_send(link_t *l, redisCallbackFn *fn, void *privdata, int argc,
                      const char **argv, const size_t *lens)
{
    redisAsyncContext *ac = l->ac;
    size_t len;
    char *cmd;
    int rc;

    if (ac == NULL || (ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
        return false;
    cmd = format_command(argc, argv, lens, &len);
    rc = redisAsyncFormattedCommand(ac, fn, privdata, cmd, len);
    free(cmd);
    if (rc != REDIS_OK)
        ms_oom();
    return true;
}


/* Sends the next handshake command, or marks the link up when done. */
static void link_handshake(link_t *l)
{
    ms_redis_t *r = l->r;
    int step = l->step++;
    char db[16];

    if (step == STEP_AUTH && r->password != NULL) {
        const char *argv[] = {"AUTH", r->password};
        size_t lens[] = {4, strlen(r->password)};

        link_send(l, handshake_cb, l, 2, argv, lens);
        return;
    }

    /* Pub/sub channels span all databases: the subscriber skips SELECT. */
    if (step == STEP_SELECT && r->addr.db != 0 && l == &r->cmd) {
        const char *argv[] = {"SELECT", db};
        size_t lens[] = {6, 0};

        lens[1] = (size_t)snprintf(db, sizeof(db), "%d", r->addr.db);
        link_send(l, handshake_cb, l, 2, argv, lens);
        return;
    }

    if (step < STEP_LAST) {
        link_handshake(l);
        return;
    }

    /* sub_cb marks the subscriber up when Redis confirms. */
    if (l == &r->sub) {
        const char *argv[] = {"SUBSCRIBE", r->channel, r->ks_channel};
        size_t lens[] = {9, strlen(r->channel), 0};

        if (r->ks_channel != NULL)
            lens[2] = strlen(r->ks_channel);
        link_send(l, sub_cb, l, r->ks_channel != NULL ? 3 : 2, argv, lens);
        for (int i = 0; i < 2 && r->ks_patterns[i] != NULL; i++) {
            const char *pargv[] = {"PSUBSCRIBE", r->ks_patterns[i]};
            size_t plens[] = {10, strlen(r->ks_patterns[i])};

            link_send(l, sub_cb, l, 2, pargv, plens);
        }
        return;
    }

    if (step - STEP_LAST < MS_SCRIPT_COUNT) {
        const char *body = script_body[step - STEP_LAST];
        const char *argv[] = {"SCRIPT", "LOAD", body};
        size_t lens[] = {6, 4, strlen(body)};

        link_send(l, handshake_cb, l, 3, argv, lens);
        return;
    }
    link_up(l);
}


static void link_connect(link_t *l)
{
    redis_addr_t *a = &l->r->addr;
    redisAsyncContext *ac;

    if (a->is_unix)
        ac = redisAsyncConnectUnix(a->where);
    else
        ac = redisAsyncConnect(a->where, a->port);
    if (ac == NULL)
        ms_oom();

    /* Keepalive notices a peer that vanished without closing. */
    if (ac->c.err == 0 && !a->is_unix)
        (void)redisEnableKeepAlive(&ac->c);
    if (ac->c.err == 0 && ms_hiredis_uv_attach(ac, l->r->loop) != REDIS_OK) {
        if (ac->c.err == 0)
            snprintf(ac->c.errstr, sizeof(ac->c.errstr),
                     "cannot watch the socket");
        ac->c.err = REDIS_ERR_OTHER;
    }
    if (ac->c.err != 0) {
        link_log_failure(l, ac->c.errstr);
        redisAsyncFree(ac);
        link_retry(l);
        return;
    }

    ac->data = l;
    l->ac = ac;
    l->state = LINK_CONNECTING;
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    uv_timer_start(&l->timer, link_timer_cb, CONNECT_TIMEOUT_MS, 0);
}


static void link_init(ms_redis_t *r, link_t *l, const char *name)
{
    l->r = r;
    l->name = name;
    l->state = LINK_IDLE;
    uv_timer_init(r->loop, &l->timer);
    l->timer.data = l;
}


/* Checks often enough that a command is cut within 25% of its timeout. */
static uint64_t watchdog_period(const ms_redis_t *r)
{
    return r->command_timeout / 4 > 10 ? r->command_timeout / 4 : 10;
}


static void watchdog_close_cb(uv_handle_t *h)
{
    ms_redis_t *r = h->data;

    r->watchdog_closed = true;
    redis_maybe_free(r);
}


int ms_redis_new(uv_loop_t *loop, const ms_redis_options_t *opt,
                 const ms_redis_callbacks_t *cb, ms_redis_t **out,
                 ms_error_t *err)
{
    redis_addr_t addr;
    ms_redis_t *r;
    int rc;

    rc = parse_url(opt->url, &addr, err);
    if (rc < 0)
        return rc;
    if (opt->channel == NULL || opt->channel[0] == '\0')
        return ms_error_set(err, MS_EINVAL, "no change channel given");

    r = ms_calloc(1, sizeof(*r));
    TAILQ_INIT(&r->inflight);
    r->loop = loop;
    r->addr = addr;
    if (opt->password != NULL)
        r->password = ms_strndup(opt->password, strlen(opt->password));
    r->channel = ms_strndup(opt->channel, strlen(opt->channel));
    if (opt->keyspace_channel != NULL)
        r->ks_channel =
            ms_strndup(opt->keyspace_channel, strlen(opt->keyspace_channel));
    for (int i = 0; i < 2; i++)
        if (opt->keyspace_patterns[i] != NULL)
            r->ks_patterns[i] = ms_strndup(opt->keyspace_patterns[i],
                                           strlen(opt->keyspace_patterns[i]));
    r->backoff_min =
        opt->backoff_min_ms ? opt->backoff_min_ms : DEFAULT_BACKOFF_MIN;
    r->backoff_max =
        opt->backoff_max_ms ? opt->backoff_max_ms : DEFAULT_BACKOFF_MAX;
    if (r->backoff_max < r->backoff_min)
        r->backoff_max = r->backoff_min;
    r->cb = *cb;
    r->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)r;
    if (r->rng == 0)
        r->rng = 1;

    r->command_timeout = opt->command_timeout_ms ? opt->command_timeout_ms
                                                 : DEFAULT_COMMAND_TIMEOUT;
    uv_timer_init(loop, &r->watchdog);
    r->watchdog.data = r;
    uv_timer_start(&r->watchdog, watchdog_cb, watchdog_period(r),
                   watchdog_period(r));

    link_init(r, &r->cmd, "cmd");
    link_init(r, &r->sub, "sub");
    link_connect(&r->cmd);
    link_connect(&r->sub);
    *out = r;
    return 0;
}


bool ms_redis_live(const ms_redis_t *r)
{
    return r->live;
}


/* --- commands --------------------------------------------------------- */

static bool cmd_usable(ms_redis_t *r)
{
    return !r->closing && r->cmd.state == LINK_UP;
}


static void inflight_add(ms_redis_t *r, request_t *req)
{
    req->sent = uv_now(r->loop);
    TAILQ_INSERT_TAIL(&r->inflight, req, link);
}


static void inflight_remove(ms_redis_t *r, request_t *req)
{
    TAILQ_REMOVE(&r->inflight, req, link);
}


static bool request_send(ms_redis_t *r, request_t *req);

static void request_finish(request_t *req, redisReply *reply, int err)
{
    req->cb(req->arg, reply, err);
    free(req);
}


/*
 * Redis answers a connection's commands in order, so the oldest command
 * in flight tells whether Redis has stopped answering (paused, swapping,
 * a network that drops everything). Then the link is cut: every command
 * in flight fails with timeout, and the link reconnects as after a drop.
 */
static void watchdog_cb(uv_timer_t *t)
{
    ms_redis_t *r = t->data;
    redisAsyncContext *ac = r->cmd.ac;
    const request_t *oldest = TAILQ_FIRST(&r->inflight);
    uint64_t age;

    if (oldest == NULL || ac == NULL || r->cmd.state != LINK_UP || r->timed_out)
        return;
    age = uv_now(r->loop) - oldest->sent;
    if (age < r->command_timeout)
        return;
    ms_log_warn("redis command timed out", "link=cmd waited_ms=%" PRIu64, age);
    r->timed_out = true;
    link_lost(&r->cmd, "command timed out");
    redisAsyncFree(ac);
}


/* NOSCRIPT: Redis lost its script cache; EVAL also puts the script back. */
static bool request_is_noscript(const request_t *req, const redisReply *rep)
{
    return req->script >= 0 && !req->retried &&
           rep->type == REDIS_REPLY_ERROR &&
           strncmp(rep->str, "NOSCRIPT", 8) == 0;
}


static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    request_t *req = privdata;
    ms_redis_t *r = req->r;
    redisReply *rep = reply;

    inflight_remove(r, req);
    if (rep == NULL) {
        link_lost(&r->cmd, ac->c.errstr);
        request_finish(req, NULL, r->timed_out ? MS_ETIMEOUT : MS_EUNAVAIL);
        return;
    }

    if (request_is_noscript(req, rep)) {
        req->retried = true;
        req->argv[0] = "EVAL";
        req->argvlen[0] = 4;
        req->argv[1] = script_body[req->script];
        req->argvlen[1] = strlen(req->argv[1]);
        if (!cmd_usable(r) || !request_send(r, req))
            request_finish(req, NULL, MS_EUNAVAIL);
        return;
    }
    request_finish(req, rep, 0);
}


static bool request_send(ms_redis_t *r, request_t *req)
{
    if (!link_send(&r->cmd, reply_cb, req, req->argc, req->argv, req->argvlen))
        return false;
    inflight_add(r, req);
    return true;
}


int ms_redis_command(ms_redis_t *r, int argc, const char **argv,
                     const size_t *argvlen, ms_redis_reply_cb cb, void *arg)
{
    request_t *req;

    if (!cmd_usable(r))
        return MS_EUNAVAIL;

    req = ms_calloc(1, sizeof(*req));
    req->r = r;
    req->cb = cb;
    req->arg = arg;
    req->script = -1;
    req->argc = argc;
    req->argv = argv;
    req->argvlen = (size_t *)argvlen;

    /* hiredis copies the arguments: the caller's are not kept. */
    if (!request_send(r, req)) {
        free(req);
        return MS_EUNAVAIL;
    }
    req->argv = NULL;
    req->argvlen = NULL;
    return 0;
}


/*
 * Builds EVALSHA <sha> <nkeys> <args...> in one allocation that keeps the
 * arguments, since hiredis copies them only for the first send.
 */
static request_t *script_request(ms_redis_t *r, ms_script_t script, int nkeys,
                                 int argc, const char **argv,
                                 const size_t *argvlen)
{
    size_t n = (size_t)argc + 3, bytes = 0;
    request_t *req;
    char *data;

    for (int i = 0; i < argc; i++)
        bytes += argvlen[i];
    req = ms_calloc(1, sizeof(*req) + n * (sizeof(char *) + sizeof(size_t)) +
                           bytes);
    req->argv = (const char **)(req + 1);
    req->argvlen = (size_t *)(req->argv + n);
    data = (char *)(req->argvlen + n);

    req->argc = (int)n;
    req->argv[0] = "EVALSHA";
    req->argvlen[0] = 7;
    req->argv[1] = r->sha[script];
    req->argvlen[1] = SHA_LEN;
    req->argv[2] = req->nkeys;
    req->argvlen[2] =
        (size_t)snprintf(req->nkeys, sizeof(req->nkeys), "%d", nkeys);
    for (int i = 0; i < argc; i++) {
        memcpy(data, argv[i], argvlen[i]);
        req->argv[i + 3] = data;
        req->argvlen[i + 3] = argvlen[i];
        data += argvlen[i];
    }
    return req;
}


int ms_redis_script(ms_redis_t *r, ms_script_t script, int nkeys, int argc,
                    const char **argv, const size_t *argvlen,
                    ms_redis_reply_cb cb, void *arg)
{
    request_t *req;

    assert(script >= 0 && script < MS_SCRIPT_COUNT);
    if (!cmd_usable(r))
        return MS_EUNAVAIL;

    req = script_request(r, script, nkeys, argc, argv, argvlen);
    req->r = r;
    req->cb = cb;
    req->arg = arg;
    req->script = (int)script;
    if (!request_send(r, req)) {
        free(req);
        return MS_EUNAVAIL;
    }
    return 0;
}


/* --- closing ---------------------------------------------------------- */

static void link_close(link_t *l)
{
    redisAsyncContext *ac = l->ac;

    l->state = LINK_DROPPING;
    uv_close((uv_handle_t *)&l->timer, link_timer_close_cb);
    if (ac == NULL)
        return;

    /* Connected: disconnect_cb clears l->ac, now or after the callback
     * this runs in. Never connected: hiredis calls nothing back. */
    if (ac->c.flags & REDIS_CONNECTED) {
        redisAsyncFree(ac);
        return;
    }
    l->ac = NULL;
    redisAsyncFree(ac);
}


void ms_redis_close(ms_redis_t *r)
{
    if (r == NULL || r->closing)
        return;

    r->closing = true;
    r->live = false;
    uv_close((uv_handle_t *)&r->watchdog, watchdog_close_cb);
    link_close(&r->cmd);
    link_close(&r->sub);
}
