/*
 * redis.h - the daemon's two links to Redis, on the libuv loop through
 * hiredis's async API: a command link (scripts and reads) and a
 * subscriber link (the change channel, and keyspace notifications).
 *
 * Each link connects by itself and, after a drop, reconnects with
 * exponential backoff and jitter. A command issued while the command link
 * is down fails at once with MS_EUNAVAIL; commands pending when it drops
 * are answered with a NULL reply and MS_EUNAVAIL. A command unanswered
 * past the timeout cuts the command link: every command pending on it is
 * answered with a NULL reply and MS_ETIMEOUT. Nothing is queued.
 *
 * Scripts (schema/<name>.lua, compiled in) are loaded with SCRIPT LOAD on
 * every connect and called with EVALSHA; a NOSCRIPT reply makes the call
 * go again as EVAL, which also reloads the script, transparently.
 *
 * Loop thread only.
 */
#ifndef MS_REDIS_H
#define MS_REDIS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "error.h"

typedef struct ms_redis_s ms_redis_t;

typedef enum {
    MS_SCRIPT_WRITE = 0, /* schema/write.lua */
    MS_SCRIPT_LOAD,      /* schema/load.lua */
    MS_SCRIPT_SYNC,      /* schema/sync.lua */
    MS_SCRIPT_READ,      /* schema/read.lua */
    MS_SCRIPT_SCRUB,     /* schema/scrub.lua */
    MS_SCRIPT_REGISTRY,  /* schema/registry.lua */
    MS_SCRIPT_MEMBERS,   /* schema/members.lua */
    MS_SCRIPT_COUNT
} ms_script_t;

/*
 * A command's answer: reply is hiredis's (freed after the callback
 * returns) and err is 0, or reply is NULL and err MS_EUNAVAIL (link
 * dropped or daemon shutting down) or MS_ETIMEOUT (Redis stopped
 * answering). An error reply from Redis arrives as a REDIS_REPLY_ERROR
 * with err 0.
 */
typedef void (*ms_redis_reply_cb)(void *arg, redisReply *reply, int err);

typedef struct ms_redis_callbacks_s {
    void *arg;
    /*
     * The links' combined state changed. live is true once the command
     * link is up with scripts loaded and the subscriber link has
     * confirmed its subscription; false as soon as either drops.
     */
    void (*on_state)(void *arg, bool live);
    /*
     * A message on the change channel or a keyspace channel, named by
     * channel; both strings valid during the call only.
     */
    void (*on_message)(void *arg, const char *channel, size_t channel_len,
                       const char *payload, size_t len);
} ms_redis_callbacks_t;

typedef struct ms_redis_options_s {
    const char *url;      /* redis://host:port[/db], unix:///path[?db=N] */
    const char *password; /* NULL for none; sent with AUTH */
    const char *channel;  /* the change channel to subscribe to */
    const char *keyspace_channel;     /* NULL, or also this channel */
    const char *keyspace_patterns[2]; /* NULL, or also these patterns */
    unsigned backoff_min_ms;          /* first reconnect delay (0: 100) */
    unsigned backoff_max_ms;          /* cap on the delay (0: 5000) */
    unsigned command_timeout_ms;      /* a reply later than this cuts the
                                         command link (0: 5000) */
} ms_redis_options_t;

/*
 * Checks a Redis URL without connecting: returns the database it names
 * (0 or more), or MS_EINVAL with a message.
 */
int ms_redis_url_check(const char *url, ms_error_t *err) MS_MUST_CHECK;

/*
 * Creates the links and starts connecting. Options are copied. Returns 0,
 * or MS_EINVAL (bad URL) with a message in err.
 */
int ms_redis_new(uv_loop_t *loop, const ms_redis_options_t *opt,
                 const ms_redis_callbacks_t *cb, ms_redis_t **out,
                 ms_error_t *err) MS_MUST_CHECK;

/* True when both links are up (see on_state). */
bool ms_redis_live(const ms_redis_t *r);

/*
 * Sends a command (binary-safe arguments, copied before return) on the
 * command link. Returns 0 (cb will be called exactly once, later), or
 * MS_EUNAVAIL at once without calling cb.
 */
int ms_redis_command(ms_redis_t *r, int argc, const char **argv,
                     const size_t *argvlen, ms_redis_reply_cb cb,
                     void *arg) MS_MUST_CHECK;

/*
 * Calls a script: EVALSHA <sha> <nkeys> <argv...>, falling back to EVAL
 * on NOSCRIPT. Same contract as ms_redis_command().
 */
int ms_redis_script(ms_redis_t *r, ms_script_t script, int nkeys, int argc,
                    const char **argv, const size_t *argvlen,
                    ms_redis_reply_cb cb, void *arg) MS_MUST_CHECK;

/*
 * Disconnects both links, answering pending commands with MS_EUNAVAIL
 * (inside this call, or just after the hiredis callback it was called
 * from returns), and frees r once every uv handle it owns has closed; the
 * loop can then finish. on_state and on_message are never called after
 * this returns.
 */
void ms_redis_close(ms_redis_t *r);

#endif
