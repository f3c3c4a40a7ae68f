/*
 * harness.h - helpers for meshsync's integration tests (cmocka).
 *
 * A harness_t is one test's world: a temporary directory (mkdtemp under
 * $TMPDIR or /tmp) holding a private redis-server on a Unix socket, any
 * number of meshsyncd processes, their sockets, cache files and logs.
 * harness_free() stops whatever still runs and removes the directory, so
 * a test that fails half-way leaves nothing behind when the harness is
 * freed in its teardown:
 *
 *   static int setup(void **state)
 *   {
 *       harness_t *h = harness_new();
 *
 *       harness_redis_start(h, NULL);
 *       *state = h;
 *       return 0;
 *   }
 *
 *   static int teardown(void **state)
 *   {
 *       harness_free(*state);
 *       return 0;
 *   }
 *
 * The helpers fail the running test (cmocka's fail_msg) when something
 * they set up goes wrong; they return errors only where documented.
 * Every wait is bounded (HARNESS_TIMEOUT_MS unless a timeout is given).
 * harness_new() ignores SIGPIPE in the test process, so writing to a
 * closed socket or pipe gives EPIPE instead of killing the test.
 *
 * Single-threaded tests only.
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <msgpack.h>

#include "meshsync.h"

/* The default bound on waits for processes, sockets and replies. */
#define HARNESS_TIMEOUT_MS 10000

#define HARNESS_PATH_MAX 108 /* what a Unix socket address can hold */

typedef struct harness_s harness_t;

/* A meshsyncd started by harness_daemon_start(); owned by its harness. */
typedef struct harness_daemon_s {
    harness_t *h;
    pid_t pid;                     /* 0 once stopped or killed */
    int err_fd;                    /* its stderr (a pipe), -1 at EOF */
    char socket[HARNESS_PATH_MAX]; /* <dir>/<name>.sock */
    char cache[HARNESS_PATH_MAX];  /* <dir>/<name>.db */
    char *log;                     /* all of its stderr read so far */
    size_t log_len;
    size_t log_cap;
    size_t log_mark; /* see harness_daemon_wait_log() */
    int status;      /* waitpid() status once reaped */
    struct harness_daemon_s *next;
} harness_daemon_t;

/* --- the test's directory --------------------------------------------- */

/* Creates the temporary directory. Free with harness_free(). */
harness_t *harness_new(void);

/*
 * Kills the daemons still running (SIGKILL), stops redis-server, removes
 * the directory with everything in it, and frees h.
 */
void harness_free(harness_t *h);

/* The directory's path. */
const char *harness_dir(const harness_t *h);

/* Writes <dir>/<name> into out (fails the test if it does not fit). */
void harness_path(const harness_t *h, const char *name, char *out, size_t size);

/*
 * cmocka fixtures for the example above: harness_setup_redis() stores a
 * new harness with redis-server running in *state; harness_teardown()
 * frees it.
 */
int harness_setup_redis(void **state);
int harness_teardown(void **state);

/* CLOCK_MONOTONIC in milliseconds, for a test's own deadlines. */
int64_t harness_now_ms(void);

/* --- redis-server ----------------------------------------------------- */

/*
 * Starts redis-server on the Unix socket <dir>/redis.sock (no TCP port,
 * no persistence, its log in <dir>/redis.log), with extra (NULL-terminated
 * "--option", "value" strings, or NULL) appended to its command line, and
 * waits until it accepts connections. Returns a connected synchronous
 * context, owned by h (freed by harness_redis_stop()). Can be called
 * again after harness_redis_stop() or harness_redis_kill() to restart
 * the server on the same socket.
 */
redisContext *harness_redis_start(harness_t *h, const char *const *extra);

/* The context harness_redis_start() returned, or NULL when stopped. */
redisContext *harness_redis(const harness_t *h);

/*
 * How many times Redis has run cmd (lower case; calls made by scripts
 * included), from INFO commandstats: 0 when never.
 */
uint64_t harness_redis_calls(const harness_t *h, const char *cmd);

/* A further synchronous context; the caller frees it with redisFree(). */
redisContext *harness_redis_connect(const harness_t *h);

/* "unix://<dir>/redis.sock" and "<dir>/redis.sock". */
const char *harness_redis_url(const harness_t *h);
const char *harness_redis_socket(const harness_t *h);

/* Stops the server: SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL. */
void harness_redis_stop(harness_t *h);

/* Kills the server with SIGKILL and reaps it (for fault tests). */
void harness_redis_kill(harness_t *h);

/*
 * Runs a command on c (hiredis's printf-like format) and returns the
 * reply, failing the test if there is none (I/O error). An error reply
 * is returned as such. The caller frees it with freeReplyObject().
 */
redisReply *harness_command(redisContext *c, const char *fmt, ...);

/*
 * Runs a command whose answer is a number: an integer reply, or a string
 * holding one (GET, HGET). Returns it, or 0 for a nil reply; any other
 * reply fails the test.
 */
long long harness_redis_int(redisContext *c, const char *fmt, ...);

/*
 * HGET key field on h's server: a copy of the string (the caller frees it
 * with free()), or NULL for nil; any other reply fails the test.
 */
char *harness_redis_hget(harness_t *h, const char *key, const char *field);

/* --- meshsyncd -------------------------------------------------------- */

/*
 * Starts meshsyncd as
 *   meshsyncd --socket <dir>/<name>.sock --cache <dir>/<name>.db
 *             --redis <harness_redis_url()> <args...>
 * (--redis only while the harness's redis-server runs), with env entries
 * ("NAME=value", NULL-terminated, or NULL) added to its environment, and
 * its stdout and stderr captured. Waits until it logs msg="ready" within
 * HARNESS_TIMEOUT_MS. harness_daemon_spawn() does not wait.
 */
harness_daemon_t *harness_daemon_start(harness_t *h, const char *name,
                                       const char *const *args,
                                       const char *const *env);
harness_daemon_t *harness_daemon_spawn(harness_t *h, const char *name,
                                       const char *const *args,
                                       const char *const *env);

/*
 * Reads the daemon's stderr until a line containing needle appears past
 * d->log_mark, then moves log_mark past that line, so that waiting twice
 * for the same text waits for a second occurrence. Returns false if none
 * appears within timeout_ms or the daemon closed its stderr.
 */
bool harness_daemon_wait_log(harness_daemon_t *d, const char *needle,
                             int timeout_ms);

/* Reads what the daemon has written to stderr so far; returns d->log. */
const char *harness_daemon_log(harness_daemon_t *d);

/*
 * Stops the daemon with SIGTERM and waits for it; fails the test unless
 * it exits with status 0 within the timeout and has removed its socket.
 */
void harness_daemon_stop(harness_daemon_t *d);

/* Sends sig, waits for the daemon to end and returns its waitpid status. */
int harness_daemon_signal(harness_daemon_t *d, int sig);

/* SIGKILL and reap (for fault tests). */
void harness_daemon_kill(harness_daemon_t *d);

/* Fails the test if the daemon's stderr so far holds a sanitizer report. */
void harness_daemon_expect_log_clean(harness_daemon_t *d);

/* harness_daemon_stop(), then harness_daemon_expect_log_clean(). */
void harness_daemon_stop_clean(harness_daemon_t *d);

/* --- libmeshsync ------------------------------------------------------ */

/*
 * Connects a client to the daemon's socket, failing the test unless it
 * is connected. The caller frees it with meshsync_free().
 */
meshsync_t *harness_client_open(const harness_daemon_t *d);

/*
 * HARNESS_CALL_OK(ms, meshsync_...(ms, ...)) fails the test unless the
 * call returns 0, naming the call, its line and the handle's error.
 */
#define HARNESS_CALL_OK(ms, call) harness_call_ok((ms), (call), #call, __LINE__)
void harness_call_ok(const meshsync_t *ms, int rc, const char *what, int line);

/*
 * The sidecar's health report through ms, as a JSON object; fails the
 * test unless it is one. The caller frees it with json_decref().
 */
json_t *harness_health(meshsync_t *ms);

/* --- raw protocol ----------------------------------------------------- */

/* Connects to a Unix stream socket; returns the fd, or -1 with errno. */
int harness_unix_connect(const char *path);

/* Sends len bytes as they are; returns 0, or -1 if the peer is gone. */
int harness_send_raw(int fd, const void *buf, size_t len);

/* Sends one frame: a 4-byte big-endian length, then body. 0 or -1. */
int harness_frame_send(int fd, const void *body, size_t len);

/*
 * Reads one frame. Returns 1 with *body (the caller frees it) and *len,
 * 0 when the peer closed the connection cleanly before a frame began,
 * or -1 on a timeout, an error, or a connection closed mid-frame.
 */
int harness_frame_recv(int fd, char **body, size_t *len, int timeout_ms);

/* Waits for the peer to close, discarding what it sends: true if it did. */
bool harness_wait_closed(int fd, int timeout_ms);

/*
 * Request building: harness_request_begin() clears sb, starts a map of
 * 2 + nmore pairs and packs "id" and "op" into it; pack the nmore other
 * pairs with pk (harness_pack_str() for strings), then send sb's data
 * with harness_frame_send(). pk must write into sb.
 */
void harness_request_begin(msgpack_packer *pk, msgpack_sbuffer *sb, uint64_t id,
                           const char *op, size_t nmore);
void harness_pack_str(msgpack_packer *pk, const char *s);

/* Sends sb's data as one frame, failing the test if it cannot. */
void harness_request_send(int fd, const msgpack_sbuffer *sb);

/* Sends {"id": id, "op": "ping"} the same way. */
void harness_ping_send(int fd, uint64_t id);

/*
 * Unpacks a frame body into u, failing the test unless it is exactly
 * one map. The caller destroys u with msgpack_unpacked_destroy().
 */
void harness_unpack_map(const char *body, size_t len, msgpack_unpacked *u);

/* The value under a string key of a map object, or NULL. */
const msgpack_object *harness_map_get(const msgpack_object *map,
                                      const char *key);

/* True if o is a string equal to s. */
bool harness_obj_is_str(const msgpack_object *o, const char *s);

/* A reply's frame and the map unpacked from it (pointing into body). */
typedef struct harness_reply_s {
    char *body;
    msgpack_unpacked u;
} harness_reply_t;

/*
 * Reads one reply within timeout_ms into r, failing the test if none
 * comes or it is not exactly one map. Free with harness_reply_free().
 */
void harness_reply_recv(int fd, int timeout_ms, harness_reply_t *r);
void harness_reply_free(harness_reply_t *r);

/* A reply map's "id", failing the test unless it is an unsigned integer. */
uint64_t harness_reply_id(const msgpack_object *reply);

/* Fails the test, naming the id and error code, unless "ok" is true. */
void harness_reply_check_ok(const msgpack_object *reply);

/*
 * A reply map's error code (a string object), or NULL when "ok" is true;
 * fails the test when the reply has neither shape.
 */
const msgpack_object *harness_reply_error_code(const msgpack_object *reply);

/* A reply map's "version", failing the test unless it is unsigned. */
uint64_t harness_reply_version(const msgpack_object *reply);

/*
 * harness_reply_recv(), then fails the test unless the reply carries id
 * and "ok" is true. Free r with harness_reply_free().
 */
void harness_reply_recv_ok(int fd, uint64_t id, int timeout_ms,
                           harness_reply_t *r);

/* --- the command-line client ------------------------------------------ */

typedef struct harness_run_s {
    int status; /* exit code, or 128 + signal number if killed */
    char *out;  /* stdout, NUL-terminated */
    size_t out_len;
    char *err; /* stderr, NUL-terminated */
    size_t err_len;
} harness_run_t;

/*
 * Runs the meshsync CLI with args (NULL-terminated, without argv[0]),
 * env entries added, and in (in_len bytes, may be NULL) on its stdin;
 * collects its output and exit status. Fails the test if it does not
 * finish within HARNESS_TIMEOUT_MS. Free with harness_run_free().
 */
void harness_cli_run(const char *const *args, const char *const *env,
                     const char *in, size_t in_len, harness_run_t *out);

/* The same for any program (path); args exclude argv[0]. */
void harness_run(const char *path, const char *const *args,
                 const char *const *env, const char *in, size_t in_len,
                 harness_run_t *out);

void harness_run_free(harness_run_t *r);

#endif
