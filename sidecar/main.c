/*
 * main.c - meshsyncd: reads the configuration, opens the cache, starts
 * the socket server and the Redis links on one libuv loop, and runs until
 * SIGTERM or SIGINT, then shuts everything down in order.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include "alloc.h"
#include "app.h"
#include "waits.h"
#include "log.h"
#include "mirror.h"
#include "registry.h"
#include "scrub.h"
#include "server.h"
#include "watch.h"
#include "writes.h"

typedef struct daemon_s {
    ms_app_t app;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_timer_t drain;       /* watches the clients finish during a clean stop */
    uv_check_t cache_check; /* starts the cache's index fill when needed */
    uv_idle_t fill;         /* fills it a step per loop turn */
    uv_prepare_t flush;     /* commits the cache's writes once per turn */
    uv_idle_t persist_idle; /* writes rows memory has and the file lacks */
    uv_work_t sort_work;    /* sorts them first, on the thread pool */
    ms_cache_persist_t *persist; /* the rows being sorted or written */
    bool persist_sorted;
    bool closed; /* close_all ran: a sort finishing now only frees */
    uint64_t drain_deadline;
    bool stopping;
    bool failed; /* start-up failed: exit 1 once shut down */
} daemon_t;

/* How often the drain looks whether every client is done. */
#define DRAIN_POLL_MS 20

/* Rows of the cache file read into memory per loop turn (about 2 ms). */
#define FILL_ROWS 2048

/* Rows written to the cache file per loop turn after a full load (about
 * 3 ms: each is also turned into JSON). */
#define PERSIST_ROWS 500

/* Closes everything; pending work not done by now fails unavailable. */
static void close_all(daemon_t *d)
{
    ms_redis_t *redis;

    uv_close((uv_handle_t *)&d->drain, NULL);
    uv_close((uv_handle_t *)&d->cache_check, NULL);
    uv_close((uv_handle_t *)&d->fill, NULL);
    uv_close((uv_handle_t *)&d->flush, NULL);
    uv_close((uv_handle_t *)&d->persist_idle, NULL);
    d->closed = true;
    if (d->persist_sorted || d->persist == NULL) {
        ms_cache_persist_free(d->persist);
        d->persist = NULL;
    }
    ms_waits_close(&d->app);
    if (d->app.server != NULL)
        ms_server_close(d->app.server);
    ms_scrub_close(&d->app);
    ms_registry_close(&d->app);
    ms_watch_close(&d->app);
    ms_mirror_close(&d->app);

    /* Writes answered while Redis closes must not start new commands. */
    redis = d->app.redis;
    d->app.redis = NULL;
    if (redis != NULL)
        ms_redis_close(redis);
    ms_writes_close(&d->app);
}


static void on_drain_tick(uv_timer_t *t)
{
    daemon_t *d = t->data;
    size_t left = d->app.server != NULL ? ms_server_sessions(d->app.server) : 0;

    if ((left > 0 || ms_scrub_releasing(&d->app) ||
         ms_registry_busy(&d->app)) &&
        uv_now(t->loop) < d->drain_deadline)
        return;
    if (left > 0)
        ms_log_warn("clients still busy at shutdown, closing them",
                    "clients=%zu", left);
    close_all(d);
}


/*
 * A clean stop: no new clients or requests, every request already read
 * is answered (writes in flight finish, reads waiting for a version end
 * with "unavailable"), then everything closes. A write Redis does not
 * answer within the command timeout fails as usual, so the wait is
 * bounded by that timeout.
 */
static void shutdown_daemon(daemon_t *d, const char *why)
{
    if (d->stopping)
        return;
    d->stopping = true;
    ms_log_info("shutting down", "reason=%s", why);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);

    ms_waits_close(&d->app);
    ms_scrub_release(&d->app);
    ms_registry_shutdown(&d->app);
    if (d->app.server != NULL)
        ms_server_drain(d->app.server);
    d->drain_deadline = uv_now(d->app.loop) + d->app.cfg->redis_timeout + 500;
    uv_timer_start(&d->drain, on_drain_tick, 0, DRAIN_POLL_MS);
}


static void on_signal(uv_signal_t *h, int signum)
{
    shutdown_daemon(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}


static int start_redis(daemon_t *d)
{
    const ms_config_t *cfg = d->app.cfg;
    ms_redis_options_t opt = {
        .url = cfg->redis_url,
        .password = cfg->redis_password,
        .channel = d->app.layout.channel,
        .keyspace_channel = d->app.scrub ? d->app.layout.ks_conn : NULL,
        .keyspace_patterns = {d->app.scrub ? d->app.layout.ks_room_pattern
                                           : NULL,
                              d->app.scrub ? d->app.layout.ks_members_pattern
                                           : NULL},
        .backoff_min_ms = cfg->backoff_min,
        .backoff_max_ms = cfg->backoff_max,
        .command_timeout_ms = cfg->redis_timeout,
    };
    ms_redis_callbacks_t cb = {
        .arg = &d->app,
        .on_state = ms_mirror_on_state,
        .on_message = ms_mirror_on_message,
    };
    ms_error_t err;

    if (ms_redis_new(d->app.loop, &opt, &cb, &d->app.redis, &err) < 0) {
        ms_log_error("cannot start Redis links", "error=\"%s\"", err.msg);
        return -1;
    }
    return 0;
}


static void on_fill(uv_idle_t *h)
{
    daemon_t *d = h->data;

    /* After a failure (the cache logs it), the check starts it again at
     * the next turn that has events, rather than spinning. */
    if (ms_cache_fill(d->app.cache, FILL_ROWS) == 0)
        return;
    uv_idle_stop(h);
    ms_mirror_cache_filled(&d->app);
}


/*
 * Before the loop waits for events, so after the replies of the turn
 * have gone out. A lost transaction took the mirror's position with it:
 * the mirror loads again.
 */
static void on_flush(uv_prepare_t *h)
{
    daemon_t *d = h->data;

    if (!ms_cache_unflushed(d->app.cache))
        return;
    if (ms_cache_flush(d->app.cache) < 0)
        ms_mirror_cache_failed(&d->app, 0);
}


static void on_persist_step(uv_idle_t *h)
{
    daemon_t *d = h->data;
    int rc = ms_cache_persist_step(d->app.cache, d->persist, PERSIST_ROWS);

    /* After a failure, the check starts it again at a later turn. */
    if (rc == 0)
        return;
    uv_idle_stop(h);
    if (rc == 1) {
        ms_cache_persist_free(d->persist);
        d->persist = NULL;
    }
}


static void on_sort(uv_work_t *w)
{
    daemon_t *d = w->data;

    ms_cache_persist_sort(d->persist);
}


static void on_sorted(uv_work_t *w, int status)
{
    daemon_t *d = w->data;

    (void)status;
    if (d->closed) {
        ms_cache_persist_free(d->persist);
        d->persist = NULL;
        return;
    }
    d->persist_sorted = true;
    uv_idle_start(&d->persist_idle, on_persist_step);
}


/*
 * After a full load, memory is ahead of the cache file (cache.h): the
 * rows that changed are sorted off the loop, then written a few per
 * turn. Once none is left, the mirror may record its position in the
 * file.
 */
static void persist_next(daemon_t *d)
{
    d->persist = ms_cache_persist_new(d->app.cache);
    d->persist_sorted = false;
    if (d->persist == NULL) {
        if (!ms_cache_ahead(d->app.cache))
            ms_mirror_cache_persisted(&d->app);
        return;
    }
    d->sort_work.data = d;
    if (uv_queue_work(d->app.loop, &d->sort_work, on_sort, on_sorted) < 0) {
        ms_cache_persist_free(d->persist);
        d->persist = NULL;
    }
}


static void on_cache_check(uv_check_t *h)
{
    daemon_t *d = h->data;

    if (!ms_cache_filled(d->app.cache))
        uv_idle_start(&d->fill, on_fill);
    if (!ms_cache_persist_wanted(d->app.cache) || d->stopping)
        return;
    if (d->persist == NULL)
        persist_next(d);
    else if (d->persist_sorted)
        uv_idle_start(&d->persist_idle, on_persist_step);
}


/*
 * The cache's index fills from the file after the cache opens and after
 * a lost transaction, while reads go on; its writes are committed once
 * per loop turn (see cache.h). None of these handles keeps the loop
 * alive: closing the cache commits what is left.
 */
static void start_cache_upkeep(daemon_t *d)
{
    uv_check_init(d->app.loop, &d->cache_check);
    uv_idle_init(d->app.loop, &d->fill);
    uv_prepare_init(d->app.loop, &d->flush);
    uv_idle_init(d->app.loop, &d->persist_idle);
    d->cache_check.data = d;
    d->fill.data = d;
    d->flush.data = d;
    d->persist_idle.data = d;
    uv_unref((uv_handle_t *)&d->cache_check);
    uv_unref((uv_handle_t *)&d->fill);
    uv_unref((uv_handle_t *)&d->flush);
    uv_unref((uv_handle_t *)&d->persist_idle);
    uv_check_start(&d->cache_check, on_cache_check);
    uv_prepare_start(&d->flush, on_flush);
    on_cache_check(&d->cache_check);
}


static void start_signals(daemon_t *d)
{
    uv_timer_init(d->app.loop, &d->drain);
    d->drain.data = d;
    uv_signal_init(d->app.loop, &d->sigterm);
    uv_signal_init(d->app.loop, &d->sigint);
    d->sigterm.data = d;
    d->sigint.data = d;
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_signal, SIGINT);
}


/*
 * Moves a cache file that is not a usable cache aside, with its WAL and
 * shared-memory files: it is only a copy of Redis, and the load rebuilds
 * it, but what was there is kept for a post-mortem.
 */
static int move_aside(const char *path)
{
    static const char *const parts[] = {"", "-wal", "-shm"};
    char from[PATH_MAX], to[PATH_MAX];
    long stamp = (long)time(NULL);

    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        snprintf(from, sizeof(from), "%s%s", path, parts[i]);
        snprintf(to, sizeof(to), "%s.corrupt-%ld%s", path, stamp, parts[i]);
        if (rename(from, to) != 0 && errno != ENOENT) {
            ms_log_error("cannot move the cache file aside",
                         "path=\"%s\" error=\"%s\"", from, strerror(errno));
            return -1;
        }
    }
    ms_log_warn("cache file unusable, moved aside; rebuilding from Redis",
                "path=\"%s\" moved_to=\"%s.corrupt-%ld\"", path, path, stamp);
    return 0;
}


/*
 * The default cache lives in /var/lib/meshsync, which may not exist yet
 * (the packages create it; a hand-run daemon may not find it).
 */
static void make_cache_dir(const char *path)
{
    char *copy = ms_strndup(path, strlen(path));
    const char *dir = dirname(copy);

    if (mkdir(dir, 0750) == 0)
        ms_log_info("created cache directory", "path=\"%s\"", dir);
    free(copy);
}


static int open_cache(ms_app_t *app)
{
    const char *path = app->cfg->cache_path;
    ms_error_t err;
    int rc;

    make_cache_dir(path);
    rc = ms_cache_open(path, &app->cache, &err);

    if (rc == MS_EINVAL) {
        ms_log_warn("cannot use cache file", "error=\"%s\"", err.msg);
        if (move_aside(path) < 0)
            return -1;
        rc = ms_cache_open(path, &app->cache, &err);
    }
    if (rc < 0)
        ms_log_error("cannot open cache", "path=\"%s\" error=\"%s\"", path,
                     err.msg);
    return rc;
}


static int run(daemon_t *d)
{
    ms_app_t *app = &d->app;
    ms_error_t err;
    int rc;

    if (open_cache(app) < 0)
        return 1;
    ms_writes_init(app);
    ms_mirror_init(app);
    ms_watch_init(app);
    ms_scrub_init(app);
    ms_registry_init(app);
    start_signals(d);
    start_cache_upkeep(d);

    if (ms_server_start(app, &err) < 0) {
        ms_log_error("cannot start server", "error=\"%s\"", err.msg);
        d->failed = true;
    } else if (start_redis(d) < 0) {
        d->failed = true;
    }
    if (d->failed)
        shutdown_daemon(d, "startup-failed");
    uv_run(app->loop, UV_RUN_DEFAULT);
    rc = d->failed ? 1 : 0;

    ms_writes_free(app);
    ms_cache_close(app->cache);
    return rc;
}


int main(int argc, char **argv)
{
    static daemon_t d;
    ms_config_t cfg;
    uv_loop_t loop;
    int rc;

    rc = ms_config_load(&cfg, argc, argv);
    if (rc != 0) {
        ms_config_free(&cfg);
        return rc > 0 ? 0 : 2;
    }
    ms_log_level = cfg.log_level;

    /*
     * A client that hangs up mid-reply must not kill the daemon, nor a
     * cache file that reaches the file size limit: the write fails and
     * the mirror deals with it like a full disk.
     */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    uv_loop_init(&loop);

    d.app.loop = &loop;
    d.app.cfg = &cfg;
    d.app.limits.max_bytes = cfg.max_value;
    d.app.limits.max_depth = cfg.max_depth;
    ms_layout_init(&d.app.layout, cfg.prefix, cfg.redis_db);
    ms_log_info("starting",
                "version=%s socket=\"%s\" cache=\"%s\" prefix=\"%s\" "
                "instance=\"%s\"",
                MESHSYNC_VERSION, cfg.socket_path, cfg.cache_path, cfg.prefix,
                cfg.instance_id);

    rc = run(&d);
    if (uv_loop_close(&loop) != 0)
        ms_log_warn("loop closed with handles still open", NULL);

    ms_log_info("stopped", "status=%d", rc);
    ms_layout_free(&d.app.layout);
    ms_config_free(&cfg);
    return rc;
}
