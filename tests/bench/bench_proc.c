/*
 * bench_proc.c - the processes of meshsync-bench (see bench_proc.h):
 * children, pinning, the temporary directory, redis-server and meshsyncd.
 * Entry points: bench_proc_signals(), bench_proc_fork(),
 * bench_proc_spawn(), bench_proc_stop(), bench_redis_start(),
 * bench_sidecar_spawn(), bench_sidecar_wait_ready(). Bench process,
 * single-threaded; the signal handler only kills and sets a flag.
 *
 * Waiting for a process to come up means retrying a connect every 1 ms
 * (10 ms for redis-server), bounded in time; waiting for one to end polls
 * a pidfd.
 */
#define _GNU_SOURCE
#include "bench_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

#define CHILDREN_MAX      32
#define REDIS_TRIES       1000
#define REDIS_PAUSE_NS    (10 * 1000000LL)
#define REDIS_CMD_TIMEOUT 600
#define CONNECT_PAUSE_NS  1000000LL
#define HEALTH_PAUSE_NS   2000000LL
#define SIDECAR_STOP_MS   60000
#define KILL_WAIT_MS      10000
#define PORT_TRIES        16
#define FORBIDDEN_PORT    6379

static volatile sig_atomic_t interrupted;
static volatile pid_t children[CHILDREN_MAX];

/* {id: 1, op: "health"}, framed. */
static const char health_req[] = "\x00\x00\x00\x0f\x82\xa2id\x01\xa2op"
                                 "\xa6health";

int64_t bench_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}


void bench_sleep_until(int64_t at_ns)
{
    struct timespec ts = {at_ns / 1000000000, at_ns % 1000000000};

    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}


/* --- signals and children --------------------------------------------- */

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
    for (int i = 0; i < CHILDREN_MAX; i++) {
        if (children[i] > 0)
            kill(children[i], SIGKILL);
    }
}


void bench_proc_signals(void)
{
    struct sigaction sa = {.sa_handler = on_signal};

    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}


bool bench_proc_interrupted(void)
{
    return interrupted != 0;
}


static void child_add(pid_t pid)
{
    for (int i = 0; i < CHILDREN_MAX; i++) {
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
    }
}


static void child_remove(pid_t pid)
{
    for (int i = 0; i < CHILDREN_MAX; i++) {
        if (children[i] == pid)
            children[i] = 0;
    }
}


int bench_proc_pin(int cpu)
{
    cpu_set_t set;

    if (cpu < 0)
        return 0;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : MS_EINTERNAL;
}


/* The child's side of a fork: default signals, gone with the bench. */
static void child_init(pid_t parent, const sigset_t *mask, int cpu)
{
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, mask, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(125);
    if (bench_proc_pin(cpu) < 0)
        _exit(124);
}


pid_t bench_proc_fork(int cpu)
{
    pid_t parent = getpid(), pid;
    sigset_t block, old;

    /* Registered before a signal can look for it. */
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old);
    pid = fork();
    if (pid == 0) {
        child_init(parent, &old, cpu);
        return 0;
    }
    if (pid > 0)
        child_add(pid);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return pid < 0 ? MS_EINTERNAL : pid;
}


pid_t bench_proc_spawn(const char *path, char *const *argv, int cpu,
                       const char *log_path)
{
    int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int null_fd;
    pid_t pid;

    if (log < 0)
        return MS_EIO;
    pid = bench_proc_fork(cpu);
    if (pid != 0) {
        close(log);
        return pid;
    }
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(log, 1) < 0 ||
        dup2(log, 2) < 0)
        _exit(126);
    execv(path, argv);
    _exit(127);
}


bool bench_proc_alive(pid_t pid)
{
    siginfo_t info = {0};

    if (pid <= 0)
        return false;
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0)
        return false;
    return info.si_pid == 0;
}


/* Waits up to timeout_ms for pid to exit; reaps it: true with *status. */
static bool wait_exit(pid_t pid, int timeout_ms, int *status)
{
    int fd = pidfd_open(pid, 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t deadline = bench_now_ns() + (int64_t)timeout_ms * 1000000;

    /* No pidfd (an old kernel): look every millisecond instead. */
    for (int i = 0; fd < 0 && i <= timeout_ms; i++) {
        if (waitpid(pid, status, WNOHANG) == pid)
            return true;
        bench_sleep_until(bench_now_ns() + 1000000);
    }
    if (fd < 0)
        return false;
    for (int i = 0; i < 64; i++) {
        int left = (int)((deadline - bench_now_ns()) / 1000000);

        if (poll(&p, 1, left > 0 ? left : 0) >= 0 || errno != EINTR)
            break;
    }
    close(fd);
    return waitpid(pid, status, WNOHANG) == pid;
}


int bench_proc_stop(pid_t pid, int sig, int timeout_ms)
{
    int status = 0;
    int rc = 0;

    if (pid <= 0)
        return 0;
    kill(pid, sig);
    if (!wait_exit(pid, timeout_ms, &status)) {
        kill(pid, SIGKILL);
        if (!wait_exit(pid, KILL_WAIT_MS, &status))
            fprintf(stderr, "bench: process %d did not die\n", (int)pid);
        rc = MS_ETIMEOUT;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        rc = MS_EINTERNAL;
    }
    child_remove(pid);
    return rc;
}


int64_t bench_proc_cpu_ns(pid_t pid)
{
    char path[64];
    long long ns = 0;
    FILE *f;
    int n;

    snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return MS_EIO;
    n = fscanf(f, "%lld", &ns);
    fclose(f);
    return n == 1 ? ns : MS_EIO;
}


long bench_proc_hwm_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = MS_EIO;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return MS_EIO;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}


/* --- the directory ---------------------------------------------------- */

int bench_proc_dir_create(char *dir, size_t size)
{
    const char *tmp = getenv("TMPDIR");
    int n;

    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";

    /* Socket paths inside must still fit a sockaddr_un. */
    n = snprintf(dir, size, "%s/meshsync-bench-XXXXXX", tmp);
    if (n < 0 || (size_t)n + 32 >= size || (size_t)n + 32 >= BENCH_PATH_MAX)
        return MS_EINVAL;
    return mkdtemp(dir) != NULL ? 0 : MS_EIO;
}


static int remove_cb(const char *path, const struct stat *st, int flag,
                     struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "bench: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}


void bench_proc_dir_remove(const char *dir)
{
    if (dir[0] != '\0')
        nftw(dir, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
}


int bench_proc_path(const char *dir, const char *name, char *out, size_t size)
{
    int n = snprintf(out, size, "%s/%s", dir, name);

    return n < 0 || (size_t)n >= size ? MS_EINVAL : 0;
}


void bench_proc_log_tail(const char *path, size_t bytes)
{
    char buf[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    off_t end;
    ssize_t n;

    if (fd < 0)
        return;
    if (bytes > sizeof(buf))
        bytes = sizeof(buf);
    end = lseek(fd, 0, SEEK_END);
    lseek(fd, end > (off_t)bytes ? end - (off_t)bytes : 0, SEEK_SET);
    n = read(fd, buf, bytes);
    close(fd);
    if (n > 0) {
        fprintf(stderr, "--- last of %s ---\n", path);
        fwrite(buf, 1, (size_t)n, stderr);
        fprintf(stderr, "---\n");
    }
}


/* --- redis-server ----------------------------------------------------- */

/* A port the kernel just handed out on 127.0.0.1, never 6379. */
static int free_port(int *port)
{
    for (int i = 0; i < PORT_TRIES; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int ok;

        if (fd < 0)
            return MS_EIO;
        ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
             getsockname(fd, (struct sockaddr *)&sa, &len) == 0;
        close(fd);
        if (!ok)
            return MS_EIO;
        *port = ntohs(sa.sin_port);
        if (*port != FORBIDDEN_PORT)
            return 0;
    }
    return MS_EIO;
}


static int redis_wait_up(bench_redis_t *r, const char *log)
{
    struct timeval tv = {1, 0};

    for (int i = 0; i < REDIS_TRIES && !bench_proc_interrupted(); i++) {
        int64_t next = bench_now_ns() + REDIS_PAUSE_NS;

        r->ctl = redisConnectUnixWithTimeout(r->sock, tv);
        if (r->ctl != NULL && r->ctl->err == 0) {
            tv.tv_sec = REDIS_CMD_TIMEOUT;
            redisSetTimeout(r->ctl, tv);
            /* hiredis leaves it inheritable: no sidecar should hold it. */
            fcntl(r->ctl->fd, F_SETFD, FD_CLOEXEC);
            return 0;
        }
        if (r->ctl != NULL)
            redisFree(r->ctl);
        r->ctl = NULL;
        if (!bench_proc_alive(r->pid))
            break;
        bench_sleep_until(next);
    }
    fprintf(stderr, "bench: redis-server did not come up\n");
    bench_proc_log_tail(log, 2048);
    return MS_EINTERNAL;
}


int bench_redis_start(bench_redis_t *r, const char *dir, int cpu)
{
    char port[16], log[BENCH_PATH_MAX];
    char *argv[] = {REDIS_SERVER_PATH,
                    "--port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--unixsocket",
                    r->sock,
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                    "--dir",
                    (char *)dir,
                    NULL};

    *r = (bench_redis_t){0};
    if (bench_proc_path(dir, "redis.sock", r->sock, sizeof(r->sock)) < 0 ||
        bench_proc_path(dir, "redis.log", log, sizeof(log)) < 0 ||
        free_port(&r->port) < 0)
        return MS_EINVAL;
    snprintf(port, sizeof(port), "%d", r->port);
    snprintf(r->url, sizeof(r->url), "unix://%s", r->sock);

    r->pid = bench_proc_spawn(REDIS_SERVER_PATH, argv, cpu, log);
    if (r->pid < 0) {
        r->pid = 0;
        return MS_EINTERNAL;
    }
    return redis_wait_up(r, log);
}


void bench_redis_stop(bench_redis_t *r)
{
    if (r->ctl != NULL) {
        /* A server shutting down closes the link: no reply is normal. */
        redisReply *rep = redisCommand(r->ctl, "SHUTDOWN NOSAVE");

        if (rep != NULL)
            freeReplyObject(rep);
        redisFree(r->ctl);
        r->ctl = NULL;
    }
    bench_proc_stop(r->pid, SIGTERM, KILL_WAIT_MS);
    r->pid = 0;
}


/* --- meshsyncd -------------------------------------------------------- */

int bench_sidecar_init(bench_sidecar_t *s, const char *dir, const char *name)
{
    char file[64];

    *s = (bench_sidecar_t){0};
    snprintf(s->name, sizeof(s->name), "%s", name);
    snprintf(file, sizeof(file), "%s.sock", name);
    if (bench_proc_path(dir, file, s->sock, sizeof(s->sock)) < 0)
        return MS_EINVAL;
    snprintf(file, sizeof(file), "%s.db", name);
    if (bench_proc_path(dir, file, s->cache, sizeof(s->cache)) < 0)
        return MS_EINVAL;
    snprintf(file, sizeof(file), "%s.log", name);
    return bench_proc_path(dir, file, s->log, sizeof(s->log));
}


int bench_sidecar_spawn(bench_sidecar_t *s, const char *redis_url, int cpu)
{
    char *argv[] = {MESHSYNCD_PATH,
                    "--socket",
                    s->sock,
                    "--cache",
                    s->cache,
                    "--redis",
                    (char *)redis_url,
                    "--log-level",
                    "warn",
                    "--scrub-interval-ms",
                    BENCH_SCRUB_INTERVAL,
                    NULL};

    s->spawn_ns = bench_now_ns();
    s->pid = bench_proc_spawn(MESHSYNCD_PATH, argv, cpu, s->log);
    if (s->pid < 0) {
        s->pid = 0;
        return MS_EINTERNAL;
    }
    return 0;
}


/* Connects, retrying every 1 ms until deadline or the daemon's end. */
static int sidecar_connect(bench_sidecar_t *s, int64_t deadline,
                           bench_conn_t *c)
{
    for (int i = 0; i < 1000000; i++) {
        int64_t next = bench_now_ns() + CONNECT_PAUSE_NS;

        if (bench_conn_unix(c, s->sock, BENCH_WIRE_FRAME) == 0)
            return 0;
        if (!bench_proc_alive(s->pid) || bench_proc_interrupted())
            return MS_EINTERNAL;
        if (next > deadline)
            return MS_ETIMEOUT;
        bench_sleep_until(next);
    }
    return MS_ETIMEOUT;
}


int bench_sidecar_connect(bench_sidecar_t *s, int timeout_ms, bench_conn_t *c)
{
    return sidecar_connect(s, bench_now_ns() + (int64_t)timeout_ms * 1000000,
                           c);
}


int bench_sidecar_send_health(bench_conn_t *c)
{
    return bench_conn_send(c, health_req, sizeof(health_req) - 1);
}


/* Sends a request and waits for its reply until deadline. */
static int ask(bench_conn_t *c, const char *req, size_t len, int64_t deadline,
               bench_msg_t *m)
{
    int64_t left = (deadline - bench_now_ns()) / 1000000;
    int rc;

    if (left <= 0)
        return MS_ETIMEOUT;
    if ((rc = bench_conn_send(c, req, len)) < 0)
        return rc;
    if ((rc = bench_conn_wait(c, (int)left)) <= 0)
        return rc < 0 ? rc : MS_ETIMEOUT;
    return bench_conn_recv(c, m);
}


static int fail_sidecar(const bench_sidecar_t *s, const char *what, int rc)
{
    fprintf(stderr, "bench: sidecar %s: %s\n", s->name, what);
    bench_proc_log_tail(s->log, 2048);
    return rc;
}


int bench_sidecar_wait_ready(bench_sidecar_t *s, int timeout_ms,
                             int64_t *ready_ns)
{
    int64_t deadline = bench_now_ns() + (int64_t)timeout_ms * 1000000;
    bench_conn_t c;
    bench_msg_t m;
    int rc = sidecar_connect(s, deadline, &c);

    if (rc < 0)
        return fail_sidecar(s, "no socket", rc);
    c.scan_all = true;
    s->health_calls = 0;
    s->health_worst_ns = 0;
    for (int i = 0; i <= timeout_ms && !bench_proc_interrupted(); i++) {
        int64_t sent = bench_now_ns();

        rc = ask(&c, health_req, sizeof(health_req) - 1, deadline, &m);
        if (rc < 0)
            break;
        s->health_calls++;
        if (bench_now_ns() - sent > s->health_worst_ns)
            s->health_worst_ns = bench_now_ns() - sent;
        if (m.ok && m.ready == 1) {
            *ready_ns = bench_now_ns();
            bench_conn_close(&c);
            return 0;
        }
        bench_sleep_until(sent + HEALTH_PAUSE_NS);
    }
    bench_conn_close(&c);
    return fail_sidecar(s, "not ready in time", rc < 0 ? rc : MS_EINTERNAL);
}


int bench_sidecar_first_read(bench_sidecar_t *s, const char *req, size_t len,
                             int timeout_ms, int64_t *served_ns)
{
    int64_t deadline = bench_now_ns() + (int64_t)timeout_ms * 1000000;
    bench_conn_t c;
    bench_msg_t m;
    int rc = sidecar_connect(s, deadline, &c);

    if (rc < 0)
        return fail_sidecar(s, "no socket", rc);
    for (int i = 0; i <= timeout_ms && !bench_proc_interrupted(); i++) {
        int64_t sent = bench_now_ns();

        rc = ask(&c, req, len, deadline, &m);
        if (rc < 0)
            break;
        if (m.ok) {
            *served_ns = bench_now_ns();
            bench_conn_close(&c);
            return 0;
        }
        bench_sleep_until(sent + CONNECT_PAUSE_NS);
    }
    bench_conn_close(&c);
    return fail_sidecar(s, "no read served in time", rc < 0 ? rc : MS_EIO);
}


/* A sanitizer build of the daemon reports into its log. */
static bool log_has_report(const char *path)
{
    char line[1024];
    bool found = false;
    FILE *f = fopen(path, "r");

    if (f == NULL)
        return false;
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, "Sanitizer") != NULL ||
                strstr(line, "runtime error") != NULL;
    fclose(f);
    return found;
}


int bench_sidecar_stop(bench_sidecar_t *s)
{
    int rc;

    if (s->pid <= 0)
        return 0;
    rc = bench_proc_stop(s->pid, SIGTERM, SIDECAR_STOP_MS);
    s->pid = 0;
    if (rc < 0 && !bench_proc_interrupted())
        return fail_sidecar(s, "did not stop cleanly", rc);
    if (log_has_report(s->log))
        return fail_sidecar(s, "sanitizer report in its log", MS_EINTERNAL);
    return rc;
}


void bench_sidecar_remove_cache(const bench_sidecar_t *s)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-lock"};
    char path[BENCH_PATH_MAX + 8];

    for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
        snprintf(path, sizeof(path), "%s%s", s->cache, suffix[i]);
        unlink(path);
    }
}
