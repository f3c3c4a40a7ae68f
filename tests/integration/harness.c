/*
 * harness.c - the integration-test helpers of harness.h: temporary
 * directories, redis-server and meshsyncd processes, libmeshsync clients,
 * raw requests and replies, and CLI runs. Test process only,
 * single-threaded.
 *
 * Waiting for a process to end uses a pidfd (poll() until it exits);
 * waiting for redis-server to come up retries a connect a bounded number
 * of times, which is the one place that pauses between attempts.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* meshsyncd's options for its socket, cache file and Redis URL. */
#define DAEMON_OPT_SOCKET "--socket"
#define DAEMON_OPT_CACHE  "--cache"
#define DAEMON_OPT_REDIS  "--redis"
#define DAEMON_READY      "msg=\"ready\""

#define REDIS_START_TRIES    1000
#define REDIS_START_PAUSE_MS 10
#define FRAME_RECV_MAX       (64u * 1024 * 1024)
#define ARGV_MAX             64

struct harness_s {
    char dir[HARNESS_PATH_MAX];
    char redis_sock[HARNESS_PATH_MAX];
    char redis_url[HARNESS_PATH_MAX + 8];
    pid_t redis_pid;
    redisContext *redis;
    harness_daemon_t *daemons;
};


/* --- processes -------------------------------------------------------- */

int64_t harness_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


static int left_ms(int64_t deadline)
{
    int64_t left = deadline - harness_now_ms();

    return left > 0 ? (int)left : 0;
}


static void pause_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}


/* Reaps pid if it ends within timeout_ms: true with *status. */
static bool wait_exit(pid_t pid, int timeout_ms, int *status)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    int fd = pidfd_open(pid, 0);

    if (fd >= 0) {
        struct pollfd p = {.fd = fd, .events = POLLIN};

        while (poll(&p, 1, left_ms(deadline)) < 0 && errno == EINTR) {
        }
        close(fd);
        return waitpid(pid, status, WNOHANG) == pid;
    }

    /* No pidfd (old kernel or sandbox): look again every few ms. */
    for (int i = 0; i < timeout_ms / 5 + 1; i++) {
        if (waitpid(pid, status, WNOHANG) == pid)
            return true;
        pause_ms(5);
    }
    return false;
}


/* Sends sig and reaps; escalates to SIGKILL after timeout_ms. */
static int end_process(pid_t pid, int sig, int timeout_ms)
{
    int status = 0;

    kill(pid, sig);
    if (wait_exit(pid, timeout_ms, &status))
        return status;
    kill(pid, SIGKILL);
    if (!wait_exit(pid, HARNESS_TIMEOUT_MS, &status))
        fprintf(stderr, "harness: process %d did not die\n", (int)pid);
    return status;
}


/*
 * Starts path with argv and env entries added. The child's stdin, stdout
 * and stderr become in_fd, out_fd and err_fd (-1: /dev/null).
 */
static pid_t spawn(const char *path, char *const *argv, const char *const *env,
                   int in_fd, int out_fd, int err_fd)
{
    pid_t pid = fork();

    if (pid != 0)
        return pid;

    int null_fd = open("/dev/null", O_RDWR);
    int fds[3] = {in_fd, out_fd, err_fd};

    for (int i = 0; i < 3; i++) {
        if (dup2(fds[i] >= 0 ? fds[i] : null_fd, i) < 0)
            _exit(126);
    }
    for (size_t i = 0; env != NULL && env[i] != NULL; i++)
        putenv(strdup(env[i]));

    /* harness_new() ignores SIGPIPE, and exec would pass that on. */
    signal(SIGPIPE, SIG_DFL);

    /* A test that dies half-way leaves no redis-server or daemon behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(125);
    execv(path, argv);
    _exit(127);
}


/* Appends a NULL-terminated list to argv at *n (bounded). */
static void argv_add(char **argv, size_t *n, const char *const *more)
{
    for (size_t i = 0; more != NULL && more[i] != NULL; i++) {
        if (*n + 1 >= ARGV_MAX)
            fail_msg("harness: too many arguments");
        argv[(*n)++] = (char *)more[i];
    }
    argv[*n] = NULL;
}


static void buf_append(char **buf, size_t *len, size_t *cap, const char *p,
                       size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;

        while (c < *len + n + 1)
            c *= 2;
        *buf = realloc(*buf, c);
        if (*buf == NULL)
            fail_msg("harness: out of memory");
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
}


/* --- the directory ---------------------------------------------------- */

harness_t *harness_new(void)
{
    const char *tmp = getenv("TMPDIR");
    harness_t *h = calloc(1, sizeof(*h));
    int n;

    if (h == NULL)
        fail_msg("harness: out of memory");
    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";

    /* Socket paths under the directory must fit a sockaddr_un. */
    n = snprintf(h->dir, sizeof(h->dir), "%s/meshsync-XXXXXX", tmp);
    if (n < 0 || (size_t)n + 40 >= sizeof(h->dir))
        fail_msg("harness: TMPDIR is too long for Unix socket paths");
    if (mkdtemp(h->dir) == NULL)
        fail_msg("harness: mkdtemp: %s", strerror(errno));

    signal(SIGPIPE, SIG_IGN);
    return h;
}


static int remove_cb(const char *path, const struct stat *st, int flag,
                     struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "harness: cannot remove %s: %s\n", path,
                strerror(errno));
    return 0;
}


static void daemon_free(harness_daemon_t *d)
{
    if (d->pid > 0)
        end_process(d->pid, SIGKILL, HARNESS_TIMEOUT_MS);
    if (d->err_fd >= 0)
        close(d->err_fd);
    free(d->log);
    free(d);
}


static void redis_end(harness_t *h, bool kill_it);


void harness_free(harness_t *h)
{
    harness_daemon_t *d, *next;

    if (h == NULL)
        return;
    for (d = h->daemons; d != NULL; d = next) {
        next = d->next;
        daemon_free(d);
    }
    redis_end(h, false);
    nftw(h->dir, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(h);
}


const char *harness_dir(const harness_t *h)
{
    return h->dir;
}


void harness_path(const harness_t *h, const char *name, char *out, size_t size)
{
    int n = snprintf(out, size, "%s/%s", h->dir, name);

    if (n < 0 || (size_t)n >= size)
        fail_msg("harness: path for %s too long", name);
}


int harness_setup_redis(void **state)
{
    harness_t *h = harness_new();

    harness_redis_start(h, NULL);
    *state = h;
    return 0;
}


int harness_teardown(void **state)
{
    harness_free(*state);
    return 0;
}


/* --- redis-server ----------------------------------------------------- */

static redisContext *redis_try_connect(const harness_t *h)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectUnixWithTimeout(h->redis_sock, tv);

    if (c != NULL && c->err == 0)
        return c;
    if (c != NULL)
        redisFree(c);
    return NULL;
}


static void redis_fail_started(harness_t *h, const char *why)
{
    char log[HARNESS_PATH_MAX];
    char text[2048];
    ssize_t n = 0;
    int fd;

    harness_path(h, "redis.log", log, sizeof(log));
    fd = open(log, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, text, sizeof(text) - 1);
        close(fd);
    }
    text[n > 0 ? n : 0] = '\0';
    fail_msg("harness: redis-server %s; its log:\n%s", why, text);
}


redisContext *harness_redis_start(harness_t *h, const char *const *extra)
{
    char *argv[ARGV_MAX] = {REDIS_SERVER_PATH,
                            "--port",
                            "0",
                            "--unixsocket",
                            h->redis_sock,
                            "--unixsocketperm",
                            "700",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--daemonize",
                            "no",
                            "--dir",
                            h->dir};
    size_t n = 15;
    char log[HARNESS_PATH_MAX];
    int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
    int fd, status;

    if (h->redis_pid > 0)
        fail_msg("harness: redis-server already running");
    harness_path(h, "redis.sock", h->redis_sock, sizeof(h->redis_sock));
    snprintf(h->redis_url, sizeof(h->redis_url), "unix://%s", h->redis_sock);
    argv_add(argv, &n, extra);

    harness_path(h, "redis.log", log, sizeof(log));
    fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        fail_msg("harness: %s: %s", log, strerror(errno));
    h->redis_pid = spawn(REDIS_SERVER_PATH, argv, NULL, -1, fd, fd);
    close(fd);
    if (h->redis_pid < 0)
        fail_msg("harness: fork: %s", strerror(errno));

    /* Waiting for a process to come up: retry, bounded in count and time. */
    for (int i = 0; i < REDIS_START_TRIES && harness_now_ms() < deadline; i++) {
        h->redis = redis_try_connect(h);
        if (h->redis != NULL)
            return h->redis;
        if (waitpid(h->redis_pid, &status, WNOHANG) == h->redis_pid) {
            h->redis_pid = 0;
            redis_fail_started(h, "exited at start");
        }
        pause_ms(REDIS_START_PAUSE_MS);
    }
    redis_end(h, true);
    redis_fail_started(h, "did not accept connections in time");
    return NULL;
}


redisContext *harness_redis(const harness_t *h)
{
    return h->redis;
}


uint64_t harness_redis_calls(const harness_t *h, const char *cmd)
{
    redisReply *rep = harness_command(h->redis, "INFO commandstats");
    char key[64];
    const char *at;
    uint64_t n = 0;

    if (rep->type != REDIS_REPLY_STRING)
        fail_msg("harness: INFO commandstats is not a string");
    snprintf(key, sizeof(key), "cmdstat_%s:calls=", cmd);
    at = strstr(rep->str, key);
    if (at != NULL)
        n = strtoull(at + strlen(key), NULL, 10);
    freeReplyObject(rep);
    return n;
}


redisContext *harness_redis_connect(const harness_t *h)
{
    redisContext *c = redis_try_connect(h);

    if (c == NULL)
        fail_msg("harness: cannot connect to redis-server");
    return c;
}


const char *harness_redis_url(const harness_t *h)
{
    return h->redis_url;
}


const char *harness_redis_socket(const harness_t *h)
{
    return h->redis_sock;
}


/* Stops redis-server, politely unless kill_it; never fails the test. */
static void redis_end(harness_t *h, bool kill_it)
{
    bool asked = false;
    int status;

    if (h->redis != NULL && !kill_it) {
        /* Shutting down, the server closes the connection: no reply. An
         * error reply (NOAUTH, ...) means it will not go this way. */
        redisReply *rep = redisCommand(h->redis, "SHUTDOWN NOSAVE");

        asked = rep == NULL;
        if (rep != NULL)
            freeReplyObject(rep);
    }
    if (h->redis != NULL)
        redisFree(h->redis);
    h->redis = NULL;

    if (h->redis_pid > 0 && kill_it)
        end_process(h->redis_pid, SIGKILL, HARNESS_TIMEOUT_MS);
    else if (h->redis_pid > 0 &&
             (!asked || !wait_exit(h->redis_pid, HARNESS_TIMEOUT_MS, &status)))
        end_process(h->redis_pid, SIGTERM, HARNESS_TIMEOUT_MS);
    h->redis_pid = 0;
}


void harness_redis_stop(harness_t *h)
{
    redis_end(h, false);
}


void harness_redis_kill(harness_t *h)
{
    redis_end(h, true);
}


static redisReply *vcommand(redisContext *c, const char *fmt, va_list ap)
{
    redisReply *rep = redisvCommand(c, fmt, ap);

    if (rep == NULL)
        fail_msg("harness: redis command failed: %s", c->errstr);
    return rep;
}


redisReply *harness_command(redisContext *c, const char *fmt, ...)
{
    redisReply *rep;
    va_list ap;

    va_start(ap, fmt);
    rep = vcommand(c, fmt, ap);
    va_end(ap);
    return rep;
}


long long harness_redis_int(redisContext *c, const char *fmt, ...)
{
    redisReply *rep;
    long long v = 0;
    va_list ap;

    va_start(ap, fmt);
    rep = vcommand(c, fmt, ap);
    va_end(ap);
    if (rep->type == REDIS_REPLY_INTEGER)
        v = rep->integer;
    else if (rep->type == REDIS_REPLY_STRING)
        v = strtoll(rep->str, NULL, 10);
    else if (rep->type != REDIS_REPLY_NIL)
        fail_msg("harness: %s: not a number (reply type %d)", fmt, rep->type);
    freeReplyObject(rep);
    return v;
}


char *harness_redis_hget(harness_t *h, const char *key, const char *field)
{
    redisReply *rep = harness_command(h->redis, "HGET %s %s", key, field);
    char *s = NULL;

    if (rep->type == REDIS_REPLY_STRING) {
        s = strdup(rep->str);
        if (s == NULL)
            fail_msg("harness: out of memory");
    } else if (rep->type != REDIS_REPLY_NIL) {
        fail_msg("harness: HGET %s %s: reply type %d", key, field, rep->type);
    }
    freeReplyObject(rep);
    return s;
}


/* --- meshsyncd -------------------------------------------------------- */

harness_daemon_t *harness_daemon_spawn(harness_t *h, const char *name,
                                       const char *const *args,
                                       const char *const *env)
{
    harness_daemon_t *d = calloc(1, sizeof(*d));
    char *argv[ARGV_MAX];
    char file[HARNESS_PATH_MAX];
    size_t n = 0;
    int p[2];

    if (d == NULL)
        fail_msg("harness: out of memory");
    d->h = h;
    d->err_fd = -1;
    snprintf(file, sizeof(file), "%s.sock", name);
    harness_path(h, file, d->socket, sizeof(d->socket));
    snprintf(file, sizeof(file), "%s.db", name);
    harness_path(h, file, d->cache, sizeof(d->cache));
    d->next = h->daemons;
    h->daemons = d;

    argv[n++] = MESHSYNCD_PATH;
    argv_add(argv, &n,
             (const char *const[]){DAEMON_OPT_SOCKET, d->socket,
                                   DAEMON_OPT_CACHE, d->cache, NULL});
    if (h->redis_pid > 0)
        argv_add(argv, &n,
                 (const char *const[]){DAEMON_OPT_REDIS, h->redis_url, NULL});
    argv_add(argv, &n, args);

    if (pipe2(p, O_CLOEXEC) != 0)
        fail_msg("harness: pipe: %s", strerror(errno));
    /* Room for a chatty daemon between two reads of its log. */
    fcntl(p[0], F_SETPIPE_SZ, 1024 * 1024);
    d->pid = spawn(MESHSYNCD_PATH, argv, env, -1, p[1], p[1]);
    close(p[1]);
    if (d->pid < 0)
        fail_msg("harness: fork: %s", strerror(errno));
    d->err_fd = p[0];
    fcntl(d->err_fd, F_SETFL, O_NONBLOCK);
    return d;
}


/* Waits up to timeout_ms for output, then reads all there is. */
static void daemon_read(harness_daemon_t *d, int timeout_ms)
{
    struct pollfd p = {.fd = d->err_fd, .events = POLLIN};
    char buf[8192];
    ssize_t n;

    if (d->err_fd < 0 || poll(&p, 1, timeout_ms) <= 0)
        return;
    for (int i = 0; i < 1024; i++) {
        n = read(d->err_fd, buf, sizeof(buf));
        if (n > 0) {
            buf_append(&d->log, &d->log_len, &d->log_cap, buf, (size_t)n);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            close(d->err_fd);
            d->err_fd = -1;
        }
        return;
    }
}


bool harness_daemon_wait_log(harness_daemon_t *d, const char *needle,
                             int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;

    /* Whatever is already in the pipe counts, even with no time to wait. */
    daemon_read(d, 0);
    for (;;) {
        const char *hit = d->log ? strstr(d->log + d->log_mark, needle) : NULL;
        const char *eol = hit ? strchr(hit, '\n') : NULL;

        if (eol != NULL) {
            d->log_mark = (size_t)(eol + 1 - d->log);
            return true;
        }
        if (d->err_fd < 0 || harness_now_ms() >= deadline)
            return false;
        daemon_read(d, left_ms(deadline));
    }
}


const char *harness_daemon_log(harness_daemon_t *d)
{
    daemon_read(d, 0);
    return d->log ? d->log : "";
}


harness_daemon_t *harness_daemon_start(harness_t *h, const char *name,
                                       const char *const *args,
                                       const char *const *env)
{
    harness_daemon_t *d = harness_daemon_spawn(h, name, args, env);

    if (!harness_daemon_wait_log(d, DAEMON_READY, HARNESS_TIMEOUT_MS))
        fail_msg("harness: meshsyncd %s not ready; its log:\n%s", name,
                 harness_daemon_log(d));
    return d;
}


/* Reads the daemon's output to EOF and reaps it, within timeout_ms. */
static bool daemon_reap(harness_daemon_t *d, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;

    while (d->err_fd >= 0 && harness_now_ms() < deadline)
        daemon_read(d, left_ms(deadline));
    if (!wait_exit(d->pid, left_ms(deadline), &d->status))
        return false;
    d->pid = 0;
    return true;
}


int harness_daemon_signal(harness_daemon_t *d, int sig)
{
    if (d->pid <= 0)
        fail_msg("harness: meshsyncd is not running");
    kill(d->pid, sig);
    if (!daemon_reap(d, HARNESS_TIMEOUT_MS)) {
        d->status = end_process(d->pid, SIGKILL, HARNESS_TIMEOUT_MS);
        d->pid = 0;
        fail_msg("harness: meshsyncd did not end after signal %d; log:\n%s",
                 sig, harness_daemon_log(d));
    }
    return d->status;
}


void harness_daemon_stop(harness_daemon_t *d)
{
    int status = harness_daemon_signal(d, SIGTERM);

    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("harness: meshsyncd ended with status 0x%x; log:\n%s",
                 (unsigned)status, harness_daemon_log(d));
    if (access(d->socket, F_OK) == 0 || errno != ENOENT)
        fail_msg("harness: meshsyncd left its socket %s behind", d->socket);
}


void harness_daemon_kill(harness_daemon_t *d)
{
    harness_daemon_signal(d, SIGKILL);
}


void harness_daemon_expect_log_clean(harness_daemon_t *d)
{
    const char *log = harness_daemon_log(d);

    if (strstr(log, "Sanitizer") != NULL ||
        strstr(log, "runtime error") != NULL)
        fail_msg("sanitizer report in meshsyncd's log:\n%s", log);
}


void harness_daemon_stop_clean(harness_daemon_t *d)
{
    harness_daemon_stop(d);
    harness_daemon_expect_log_clean(d);
}


/* --- libmeshsync ------------------------------------------------------ */

meshsync_t *harness_client_open(const harness_daemon_t *d)
{
    meshsync_t *ms = meshsync_connect(d->socket);

    assert_non_null(ms);
    if (meshsync_errcode(ms) != NULL)
        fail_msg("connect %s: %s", d->socket, meshsync_errmsg(ms));
    return ms;
}


void harness_call_ok(const meshsync_t *ms, int rc, const char *what, int line)
{
    if (rc != 0)
        fail_msg("line %d: %s failed: %s: %s", line, what, meshsync_errcode(ms),
                 meshsync_errmsg(ms));
}


json_t *harness_health(meshsync_t *ms)
{
    meshsync_value_t v;
    json_t *report;

    HARNESS_CALL_OK(ms, meshsync_health(ms, &v));
    report = json_loads(v.data, 0, NULL);
    if (!json_is_object(report))
        fail_msg("health report is not an object: %s", v.data);
    meshsync_value_free(&v);
    return report;
}


/* --- raw protocol ----------------------------------------------------- */

int harness_unix_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;

        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}


int harness_send_raw(int fd, const void *buf, size_t len)
{
    int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
    const char *p = buf;

    while (len > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        ssize_t n;

        if (poll(&pfd, 1, left_ms(deadline)) <= 0)
            return -1;
        n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}


int harness_frame_send(int fd, const void *body, size_t len)
{
    unsigned char hdr[4] = {(unsigned char)(len >> 24),
                            (unsigned char)(len >> 16),
                            (unsigned char)(len >> 8), (unsigned char)len};

    if (len > UINT32_MAX || harness_send_raw(fd, hdr, sizeof(hdr)) != 0)
        return -1;
    return harness_send_raw(fd, body, len);
}


/* Reads exactly n bytes: 1, 0 on EOF before the first byte, or -1. */
static int recv_exact(int fd, char *buf, size_t n, int64_t deadline)
{
    size_t got = 0;

    while (got < n) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t k;

        if (poll(&pfd, 1, left_ms(deadline)) <= 0)
            return -1;
        k = recv(fd, buf + got, n - got, MSG_DONTWAIT);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (k < 0)
            return -1;
        if (k == 0)
            return got == 0 ? 0 : -1;
        got += (size_t)k;
    }
    return 1;
}


int harness_frame_recv(int fd, char **body, size_t *len, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    unsigned char hdr[4];
    size_t n;
    int rc;

    *body = NULL;
    *len = 0;
    rc = recv_exact(fd, (char *)hdr, sizeof(hdr), deadline);
    if (rc <= 0)
        return rc;
    n = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 |
        hdr[3];
    if (n > FRAME_RECV_MAX)
        return -1;

    *body = malloc(n + 1);
    if (*body == NULL)
        fail_msg("harness: out of memory");
    rc = n > 0 ? recv_exact(fd, *body, n, deadline) : 1;
    if (rc != 1) {
        free(*body);
        *body = NULL;
        return -1;
    }
    (*body)[n] = '\0';
    *len = n;
    return 1;
}


bool harness_wait_closed(int fd, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    char buf[4096];

    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t k;

        if (poll(&pfd, 1, left_ms(deadline)) <= 0)
            return false;
        k = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            return true;
        if (k < 0 && errno != EAGAIN && errno != EINTR)
            return false;
    }
}


void harness_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);

    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}


void harness_request_begin(msgpack_packer *pk, msgpack_sbuffer *sb, uint64_t id,
                           const char *op, size_t nmore)
{
    msgpack_sbuffer_clear(sb);
    msgpack_pack_map(pk, 2 + nmore);
    harness_pack_str(pk, "id");
    msgpack_pack_uint64(pk, id);
    harness_pack_str(pk, "op");
    harness_pack_str(pk, op);
}


void harness_request_send(int fd, const msgpack_sbuffer *sb)
{
    if (harness_frame_send(fd, sb->data, sb->size) != 0)
        fail_msg("harness: cannot send a %zu-byte request", sb->size);
}


void harness_ping_send(int fd, uint64_t id)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    harness_request_begin(&pk, &sb, id, "ping", 0);
    harness_request_send(fd, &sb);
    msgpack_sbuffer_destroy(&sb);
}


void harness_unpack_map(const char *body, size_t len, msgpack_unpacked *u)
{
    size_t off = 0;
    msgpack_unpack_return rc;

    msgpack_unpacked_init(u);
    rc = msgpack_unpack_next(u, body, len, &off);
    if (rc != MSGPACK_UNPACK_SUCCESS || off != len ||
        u->data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(u);
        fail_msg("harness: frame body is not exactly one msgpack map");
    }
}


const msgpack_object *harness_map_get(const msgpack_object *map,
                                      const char *key)
{
    size_t n = strlen(key);

    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];

        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == n &&
            memcmp(kv->key.via.str.ptr, key, n) == 0)
            return &kv->val;
    }
    return NULL;
}


bool harness_obj_is_str(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);

    return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}


void harness_reply_recv(int fd, int timeout_ms, harness_reply_t *r)
{
    size_t len;

    if (harness_frame_recv(fd, &r->body, &len, timeout_ms) != 1)
        fail_msg("harness: no reply within %d ms", timeout_ms);
    harness_unpack_map(r->body, len, &r->u);
}


void harness_reply_free(harness_reply_t *r)
{
    msgpack_unpacked_destroy(&r->u);
    free(r->body);
}


/* A reply's unsigned integer under key; fails the test if there is none. */
static uint64_t reply_u64(const msgpack_object *reply, const char *key)
{
    const msgpack_object *o = harness_map_get(reply, key);

    if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        fail_msg("harness: reply without an unsigned \"%s\"", key);
    return o->via.u64;
}


uint64_t harness_reply_id(const msgpack_object *reply)
{
    return reply_u64(reply, "id");
}


const msgpack_object *harness_reply_error_code(const msgpack_object *reply)
{
    const msgpack_object *ok = harness_map_get(reply, "ok");
    const msgpack_object *error, *code;

    if (ok == NULL || ok->type != MSGPACK_OBJECT_BOOLEAN)
        fail_msg("harness: reply without a boolean \"ok\"");
    if (ok->via.boolean)
        return NULL;
    error = harness_map_get(reply, "error");
    code = error != NULL ? harness_map_get(error, "code") : NULL;
    if (code == NULL || code->type != MSGPACK_OBJECT_STR)
        fail_msg("harness: error reply without a string code");
    return code;
}


uint64_t harness_reply_version(const msgpack_object *reply)
{
    return reply_u64(reply, "version");
}


void harness_reply_check_ok(const msgpack_object *reply)
{
    const msgpack_object *ok = harness_map_get(reply, "ok");
    const msgpack_object *code;

    if (ok != NULL && ok->type == MSGPACK_OBJECT_BOOLEAN && ok->via.boolean)
        return;

    code = harness_map_get(harness_map_get(reply, "error"), "code");
    if (code != NULL && code->type == MSGPACK_OBJECT_STR)
        fail_msg("request %" PRIu64 " failed: %.*s", harness_reply_id(reply),
                 (int)code->via.str.size, code->via.str.ptr);
    else
        fail_msg("request %" PRIu64 " failed: ?", harness_reply_id(reply));
}


void harness_reply_recv_ok(int fd, uint64_t id, int timeout_ms,
                           harness_reply_t *r)
{
    harness_reply_recv(fd, timeout_ms, r);
    assert_int_equal(harness_reply_id(&r->u.data), id);
    harness_reply_check_ok(&r->u.data);
}


/* --- running programs ------------------------------------------------- */

/* One step of a run: feeds stdin and reads stdout/stderr if ready. */
static void run_pump(struct pollfd *p, harness_run_t *out, const char **in,
                     size_t *in_left, size_t caps[2])
{
    char buf[8192];
    ssize_t n;

    if (p[0].fd >= 0 && (p[0].revents & (POLLOUT | POLLERR | POLLHUP))) {
        n = write(p[0].fd, *in, *in_left);
        if (n > 0) {
            *in += n;
            *in_left -= (size_t)n;
        }
        if ((n < 0 && errno != EAGAIN && errno != EINTR) || *in_left == 0) {
            close(p[0].fd);
            p[0].fd = -1;
        }
    }
    for (int i = 1; i < 3; i++) {
        if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        n = read(p[i].fd, buf, sizeof(buf));
        if (n > 0 && i == 1)
            buf_append(&out->out, &out->out_len, &caps[0], buf, (size_t)n);
        else if (n > 0)
            buf_append(&out->err, &out->err_len, &caps[1], buf, (size_t)n);
        else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            close(p[i].fd);
            p[i].fd = -1;
        }
    }
}


void harness_run(const char *path, const char *const *args,
                 const char *const *env, const char *in, size_t in_len,
                 harness_run_t *out)
{
    int64_t deadline = harness_now_ms() + HARNESS_TIMEOUT_MS;
    char *argv[ARGV_MAX] = {(char *)path};
    size_t n = 1, caps[2] = {0, 0};
    int pin[2] = {-1, -1}, pout[2], perr[2], status;
    struct pollfd p[3];
    pid_t pid;

    memset(out, 0, sizeof(*out));
    argv_add(argv, &n, args);
    if ((in != NULL && pipe2(pin, O_CLOEXEC) != 0) ||
        pipe2(pout, O_CLOEXEC) != 0 || pipe2(perr, O_CLOEXEC) != 0)
        fail_msg("harness: pipe: %s", strerror(errno));

    pid = spawn(path, argv, env, pin[0], pout[1], perr[1]);
    if (pid < 0)
        fail_msg("harness: fork: %s", strerror(errno));
    if (pin[0] >= 0)
        close(pin[0]);
    close(pout[1]);
    close(perr[1]);

    p[0] = (struct pollfd){.fd = in_len > 0 ? pin[1] : -1, .events = POLLOUT};
    p[1] = (struct pollfd){.fd = pout[0], .events = POLLIN};
    p[2] = (struct pollfd){.fd = perr[0], .events = POLLIN};
    if (pin[1] >= 0 && in_len == 0)
        close(pin[1]);
    for (int i = 0; i < 3; i++) {
        if (p[i].fd >= 0)
            fcntl(p[i].fd, F_SETFL, O_NONBLOCK);
    }

    while ((p[0].fd >= 0 || p[1].fd >= 0 || p[2].fd >= 0) &&
           poll(p, 3, left_ms(deadline)) > 0)
        run_pump(p, out, &in, &in_len, caps);
    for (int i = 0; i < 3; i++) {
        if (p[i].fd >= 0)
            close(p[i].fd);
    }

    if (!wait_exit(pid, left_ms(deadline), &status)) {
        end_process(pid, SIGKILL, HARNESS_TIMEOUT_MS);
        fail_msg("harness: %s did not finish in time", path);
    }
    out->status =
        WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (out->out == NULL)
        buf_append(&out->out, &out->out_len, &caps[0], "", 0);
    if (out->err == NULL)
        buf_append(&out->err, &out->err_len, &caps[1], "", 0);
}


void harness_cli_run(const char *const *args, const char *const *env,
                     const char *in, size_t in_len, harness_run_t *out)
{
    harness_run(MESHSYNC_CLI_PATH, args, env, in, in_len, out);
}


void harness_run_free(harness_run_t *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}
