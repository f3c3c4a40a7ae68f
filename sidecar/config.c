/*
 * config.c - parses meshsyncd's flags and MESHSYNC_* environment
 * variables (see config.h). Runs once, before the loop starts.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "frame.h"
#include "redis.h"
#include "value.h"

#ifndef MESHSYNC_VERSION
#define MESHSYNC_VERSION "0.1.0"
#endif

static const char usage_text[] =
    "Usage: meshsyncd [OPTION]...\n"
    "Mirror Mesh connection and room metadata from Redis into a local\n"
    "SQLite cache and serve it over a Unix socket (msgpack frames).\n"
    "\n"
    "Each option can also be set by the environment variable shown;\n"
    "an option on the command line wins.\n"
    "\n"
    "  --socket PATH          Unix socket to listen on\n"
    "                         [MESHSYNC_SOCKET, " MS_DEFAULT_SOCKET "]\n"
    "  --socket-mode MODE     octal permissions of the socket file\n"
    "                         [MESHSYNC_SOCKET_MODE, 0660]\n"
    "  --redis URL            redis://host:port[/db] or\n"
    "                         unix:///path/to/redis.sock[?db=N]\n"
    "                         [MESHSYNC_REDIS, " MS_DEFAULT_REDIS "]\n"
    "  --redis-password-file FILE\n"
    "                         read the Redis password from FILE; or set\n"
    "                         MESHSYNC_REDIS_PASSWORD (never on argv)\n"
    "  --cache FILE           SQLite cache file\n"
    "                         [MESHSYNC_CACHE, " MS_DEFAULT_CACHE "]\n"
    "  --prefix PREFIX        Redis key prefix shared with Mesh\n"
    "                         [MESHSYNC_PREFIX, " MS_DEFAULT_PREFIX "]\n"
    "  --instance-id ID       this sidecar's instance id\n"
    "                         [MESHSYNC_INSTANCE_ID, hostname-pid]\n"
    "  --log-level LEVEL      error, warn, info or debug\n"
    "                         [MESHSYNC_LOG_LEVEL, info]\n"
    "  --max-frame-bytes N    largest request frame\n"
    "                         [MESHSYNC_MAX_FRAME_BYTES, 1048576]\n"
    "  --max-value-bytes N    largest value as JSON text\n"
    "                         [MESHSYNC_MAX_VALUE_BYTES, 65536]\n"
    "  --max-depth N          deepest value nesting, 1-31\n"
    "                         [MESHSYNC_MAX_DEPTH, 31]\n"
    "  --max-id-bytes N       longest connection id or room name\n"
    "                         [MESHSYNC_MAX_ID_BYTES, 256]\n"
    "  --merge-retries N      compare-and-set attempts per merge\n"
    "                         [MESHSYNC_MERGE_RETRIES, 64]\n"
    "  --redis-backoff-min-ms N, --redis-backoff-max-ms N\n"
    "                         reconnect delays: the first at most N ms, then\n"
    "                         doubling up to the max, with random jitter\n"
    "                         [MESHSYNC_REDIS_BACKOFF_MIN_MS, 100;\n"
    "                         MESHSYNC_REDIS_BACKOFF_MAX_MS, 5000]\n"
    "  --log-length N         changes kept in Redis's change log, for\n"
    "                         sidecars catching up [MESHSYNC_LOG_LENGTH,\n"
    "                         10000]\n"
    "  --history-check-ms N   how often a live sidecar checks that Redis\n"
    "                         still holds the history its cache comes from\n"
    "                         (a FLUSHALL no write follows shows nowhere\n"
    "                         else); 0 turns it off\n"
    "                         [MESHSYNC_HISTORY_CHECK_MS, 1000]\n"
    "  --scrub-interval-ms N  how often the scrub looks through Redis for\n"
    "                         writes made outside meshsync (one sidecar at\n"
    "                         a time does it); 0 turns it off\n"
    "                         [MESHSYNC_SCRUB_INTERVAL_MS, 30000]\n"
    "  --heartbeat-ms N       how often this instance refreshes its heartbeat\n"
    "                         in Mesh's registry [MESHSYNC_HEARTBEAT_MS, "
    "1000]\n"
    "  --heartbeat-ttl-ms N   how long a heartbeat lasts: an instance silent\n"
    "                         this long is dead, its connections reaped\n"
    "                         [MESHSYNC_HEARTBEAT_TTL_MS, 5000]\n"
    "  --reap-interval-ms N   how often to look for dead instances to reap;\n"
    "                         0 never [MESHSYNC_REAP_INTERVAL_MS, 2000]\n"
    "  --close-on-exit yes|no on SIGTERM, close the connections this\n"
    "                         instance owns and leave the registry\n"
    "                         [MESHSYNC_CLOSE_ON_EXIT, yes]\n"
    "  --redis-timeout-ms N   a Redis command unanswered this long cuts the\n"
    "                         link; its writes fail with timeout\n"
    "                         [MESHSYNC_REDIS_TIMEOUT_MS, 5000]\n"
    "  -h, --help             show this help and exit\n"
    "  -V, --version          show the version and exit\n"
    "\n"
    "Logs go to stderr, one line per event. SIGTERM or SIGINT stops the\n"
    "daemon cleanly: no new requests, every one already read answered,\n"
    "the socket file removed.\n";

enum {
    OPT_SOCKET = 256,
    OPT_SOCKET_MODE,
    OPT_REDIS,
    OPT_PASSWORD_FILE,
    OPT_CACHE,
    OPT_PREFIX,
    OPT_INSTANCE_ID,
    OPT_LOG_LEVEL,
    OPT_MAX_FRAME,
    OPT_MAX_VALUE,
    OPT_MAX_DEPTH,
    OPT_MAX_ID,
    OPT_MERGE_RETRIES,
    OPT_REDIS_TIMEOUT,
    OPT_BACKOFF_MIN,
    OPT_BACKOFF_MAX,
    OPT_LOG_LENGTH,
    OPT_SCRUB_INTERVAL,
    OPT_HISTORY_CHECK,
    OPT_HEARTBEAT,
    OPT_HEARTBEAT_TTL,
    OPT_REAP_INTERVAL,
    OPT_CLOSE_ON_EXIT
};

/* Option and environment names, in one table so the two never drift. */
static const struct {
    int opt;
    const char *flag;
    const char *env;
} settings[] = {
    {OPT_SOCKET, "socket", "MESHSYNC_SOCKET"},
    {OPT_SOCKET_MODE, "socket-mode", "MESHSYNC_SOCKET_MODE"},
    {OPT_REDIS, "redis", "MESHSYNC_REDIS"},
    {OPT_PASSWORD_FILE, "redis-password-file", NULL},
    {OPT_CACHE, "cache", "MESHSYNC_CACHE"},
    {OPT_PREFIX, "prefix", "MESHSYNC_PREFIX"},
    {OPT_INSTANCE_ID, "instance-id", "MESHSYNC_INSTANCE_ID"},
    {OPT_LOG_LEVEL, "log-level", "MESHSYNC_LOG_LEVEL"},
    {OPT_MAX_FRAME, "max-frame-bytes", "MESHSYNC_MAX_FRAME_BYTES"},
    {OPT_MAX_VALUE, "max-value-bytes", "MESHSYNC_MAX_VALUE_BYTES"},
    {OPT_MAX_DEPTH, "max-depth", "MESHSYNC_MAX_DEPTH"},
    {OPT_MAX_ID, "max-id-bytes", "MESHSYNC_MAX_ID_BYTES"},
    {OPT_MERGE_RETRIES, "merge-retries", "MESHSYNC_MERGE_RETRIES"},
    {OPT_REDIS_TIMEOUT, "redis-timeout-ms", "MESHSYNC_REDIS_TIMEOUT_MS"},
    {OPT_BACKOFF_MIN, "redis-backoff-min-ms", "MESHSYNC_REDIS_BACKOFF_MIN_MS"},
    {OPT_BACKOFF_MAX, "redis-backoff-max-ms", "MESHSYNC_REDIS_BACKOFF_MAX_MS"},
    {OPT_LOG_LENGTH, "log-length", "MESHSYNC_LOG_LENGTH"},
    {OPT_SCRUB_INTERVAL, "scrub-interval-ms", "MESHSYNC_SCRUB_INTERVAL_MS"},
    {OPT_HISTORY_CHECK, "history-check-ms", "MESHSYNC_HISTORY_CHECK_MS"},
    {OPT_HEARTBEAT, "heartbeat-ms", "MESHSYNC_HEARTBEAT_MS"},
    {OPT_HEARTBEAT_TTL, "heartbeat-ttl-ms", "MESHSYNC_HEARTBEAT_TTL_MS"},
    {OPT_REAP_INTERVAL, "reap-interval-ms", "MESHSYNC_REAP_INTERVAL_MS"},
    {OPT_CLOSE_ON_EXIT, "close-on-exit", "MESHSYNC_CLOSE_ON_EXIT"},
};

#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

static void set_string(char **slot, const char *value)
{
    free(*slot);
    *slot = ms_strndup(value, strlen(value));
}


static int parse_number(const char *name, const char *s, int base,
                        unsigned long min, unsigned long max,
                        unsigned long *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, base);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min ||
        v > max) {
        fprintf(stderr, "meshsyncd: --%s must be a number from %lu to %lu\n",
                name, min, max);
        return -1;
    }
    *out = v;
    return 0;
}


static int parse_mode(const char *s, unsigned long *out)
{
    char *end;

    errno = 0;
    *out = strtoul(s, &end, 8);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || *out > 0777) {
        fprintf(stderr, "meshsyncd: --socket-mode must be an octal mode "
                        "from 0 to 0777, such as 0660\n");
        return -1;
    }
    return 0;
}


static int read_password_file(ms_config_t *cfg, const char *path)
{
    char buf[4096];
    size_t n;
    FILE *f = fopen(path, "r");

    if (f == NULL) {
        fprintf(stderr, "meshsyncd: cannot read %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    if (n == sizeof(buf)) {
        fprintf(stderr, "meshsyncd: %s is too long for a password\n", path);
        return -1;
    }
    buf[n] = '\0';

    /* Files written by editors and `echo` end with a newline. */
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    if (n == 0 || strlen(buf) != n) {
        fprintf(stderr,
                "meshsyncd: %s holds no password (empty, or a NUL "
                "byte)\n",
                path);
        return -1;
    }
    set_string(&cfg->redis_password, buf);
    explicit_bzero(buf, sizeof(buf));
    return 0;
}


/* Applies one setting, from a flag or from the environment. */
static int apply(ms_config_t *cfg, int opt, const char *name, const char *v)
{
    unsigned long n;

    switch (opt) {
    case OPT_SOCKET:
        set_string(&cfg->socket_path, v);
        return 0;
    case OPT_SOCKET_MODE:
        if (parse_mode(v, &n) < 0)
            return -1;
        cfg->socket_mode = (unsigned)n;
        return 0;
    case OPT_REDIS:
        set_string(&cfg->redis_url, v);
        return 0;
    case OPT_PASSWORD_FILE:
        return read_password_file(cfg, v);
    case OPT_CACHE:
        set_string(&cfg->cache_path, v);
        return 0;
    case OPT_PREFIX:
        set_string(&cfg->prefix, v);
        return 0;
    case OPT_INSTANCE_ID:
        set_string(&cfg->instance_id, v);
        return 0;
    case OPT_LOG_LEVEL:
        if (ms_log_parse_level(v, &cfg->log_level) == 0)
            return 0;
        fprintf(stderr, "meshsyncd: --log-level must be error, warn, info "
                        "or debug\n");
        return -1;
    case OPT_MAX_FRAME:
        if (parse_number(name, v, 10, 64, 64ul << 20, &n) < 0)
            return -1;
        cfg->max_frame = n;
        return 0;
    case OPT_MAX_VALUE:
        /* A reply carries a value; libmeshsync reads replies to 16 MiB. */
        if (parse_number(name, v, 10, 16, 15ul << 20, &n) < 0)
            return -1;
        cfg->max_value = n;
        return 0;
    case OPT_MAX_DEPTH:
        if (parse_number(name, v, 10, 1, MS_VALUE_DEPTH_CAP, &n) < 0)
            return -1;
        cfg->max_depth = (int)n;
        return 0;
    case OPT_MAX_ID:
        if (parse_number(name, v, 10, 1, 65536, &n) < 0)
            return -1;
        cfg->max_id = n;
        return 0;
    case OPT_MERGE_RETRIES:
        if (parse_number(name, v, 10, 1, 100000, &n) < 0)
            return -1;
        cfg->merge_retries = (unsigned)n;
        return 0;
    case OPT_REDIS_TIMEOUT:
        if (parse_number(name, v, 10, 10, 3600000, &n) < 0)
            return -1;
        cfg->redis_timeout = (unsigned)n;
        return 0;
    case OPT_LOG_LENGTH:
        if (parse_number(name, v, 10, 100, 100000000, &n) < 0)
            return -1;
        cfg->log_length = (unsigned)n;
        return 0;
    case OPT_HEARTBEAT:
        if (parse_number(name, v, 10, 10, 3600000, &n) < 0)
            return -1;
        cfg->heartbeat = (unsigned)n;
        return 0;
    case OPT_HEARTBEAT_TTL:
        if (parse_number(name, v, 10, 20, 86400000, &n) < 0)
            return -1;
        cfg->heartbeat_ttl = (unsigned)n;
        return 0;
    case OPT_REAP_INTERVAL:
        if (parse_number(name, v, 10, 0, 86400000, &n) < 0)
            return -1;
        cfg->reap_interval = (unsigned)n;
        return 0;
    case OPT_CLOSE_ON_EXIT:
        if (strcmp(v, "yes") != 0 && strcmp(v, "no") != 0) {
            fprintf(stderr, "meshsyncd: --%s wants yes or no, not '%s'\n", name,
                    v);
            return -1;
        }
        cfg->close_on_exit = strcmp(v, "yes") == 0;
        return 0;
    case OPT_SCRUB_INTERVAL:
        if (parse_number(name, v, 10, 0, 86400000, &n) < 0)
            return -1;
        cfg->scrub_interval = (unsigned)n;
        return 0;
    case OPT_HISTORY_CHECK:
        if (parse_number(name, v, 10, 0, 86400000, &n) < 0)
            return -1;
        cfg->history_check = (unsigned)n;
        return 0;
    case OPT_BACKOFF_MIN:
    case OPT_BACKOFF_MAX:
        if (parse_number(name, v, 10, 1, 600000, &n) < 0)
            return -1;
        *(opt == OPT_BACKOFF_MIN ? &cfg->backoff_min : &cfg->backoff_max) =
            (unsigned)n;
        return 0;
    }
    return -1;
}


static void set_defaults(ms_config_t *cfg)
{
    char host[256];

    memset(cfg, 0, sizeof(*cfg));
    set_string(&cfg->socket_path, MS_DEFAULT_SOCKET);
    cfg->socket_mode = 0660;
    set_string(&cfg->redis_url, MS_DEFAULT_REDIS);
    set_string(&cfg->cache_path, MS_DEFAULT_CACHE);
    set_string(&cfg->prefix, MS_DEFAULT_PREFIX);
    cfg->log_level = MS_LOG_INFO;
    cfg->max_frame = MS_FRAME_DEFAULT_MAX;
    cfg->max_value = MS_VALUE_DEFAULT_MAX_BYTES;
    cfg->max_depth = MS_VALUE_DEFAULT_MAX_DEPTH;
    cfg->max_id = 256;
    cfg->merge_retries = 64;
    cfg->redis_timeout = 5000;
    cfg->backoff_min = 100;
    cfg->backoff_max = 5000;
    cfg->log_length = 10000;
    cfg->scrub_interval = 30000;
    cfg->history_check = 1000;
    cfg->heartbeat = 1000;
    cfg->heartbeat_ttl = 5000;
    cfg->reap_interval = 2000;
    cfg->close_on_exit = true;

    if (gethostname(host, sizeof(host)) != 0)
        strcpy(host, "meshsyncd");
    host[sizeof(host) - 1] = '\0';
    cfg->instance_id = ms_malloc(strlen(host) + 24);
    sprintf(cfg->instance_id, "%s-%ld", host, (long)getpid());
}


static int load_env(ms_config_t *cfg)
{
    const char *pw = getenv("MESHSYNC_REDIS_PASSWORD");

    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *v = settings[i].env ? getenv(settings[i].env) : NULL;

        if (v != NULL && *v != '\0' &&
            apply(cfg, settings[i].opt, settings[i].flag, v) < 0)
            return -1;
    }
    if (pw != NULL && *pw != '\0')
        set_string(&cfg->redis_password, pw);
    return 0;
}


static int validate(ms_config_t *cfg)
{
    ms_error_t err;

    if (cfg->socket_path[0] == '\0' || cfg->cache_path[0] == '\0' ||
        cfg->prefix[0] == '\0' || cfg->instance_id[0] == '\0') {
        fprintf(stderr, "meshsyncd: --socket, --cache, --prefix and "
                        "--instance-id must not be empty\n");
        return -1;
    }
    cfg->redis_db = ms_redis_url_check(cfg->redis_url, &err);
    if (cfg->redis_db < 0) {
        fprintf(stderr, "meshsyncd: --redis: %s\n", err.msg);
        return -1;
    }
    if (cfg->backoff_max < cfg->backoff_min) {
        fprintf(stderr, "meshsyncd: --redis-backoff-max-ms cannot be below "
                        "--redis-backoff-min-ms\n");
        return -1;
    }
    /* One late beat must not kill an instance. */
    if (cfg->heartbeat_ttl < 2 * cfg->heartbeat) {
        fprintf(stderr, "meshsyncd: --heartbeat-ttl-ms must be at least "
                        "twice --heartbeat-ms\n");
        return -1;
    }
    if (cfg->max_value > cfg->max_frame) {
        fprintf(stderr, "meshsyncd: --max-value-bytes cannot exceed "
                        "--max-frame-bytes\n");
        return -1;
    }
    return 0;
}


int ms_config_load(ms_config_t *cfg, int argc, char **argv)
{
    struct option longopts[N_SETTINGS + 3];
    int opt;

    set_defaults(cfg);
    for (size_t i = 0; i < N_SETTINGS; i++)
        longopts[i] = (struct option){settings[i].flag, required_argument, NULL,
                                      settings[i].opt};
    longopts[N_SETTINGS] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[N_SETTINGS + 1] =
        (struct option){"version", no_argument, NULL, 'V'};
    longopts[N_SETTINGS + 2] = (struct option){NULL, 0, NULL, 0};

    if (load_env(cfg) < 0)
        return -1;

    /* getopt would name the program by its full path: report ourselves. */
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":hV", longopts, NULL)) != -1) {
        if (opt == 'h') {
            fputs(usage_text, stdout);
            return 1;
        }
        if (opt == 'V') {
            puts("meshsyncd " MESHSYNC_VERSION);
            return 1;
        }
        if (opt == '?' || opt == ':') {
            fprintf(stderr, "meshsyncd: %s '%s'\n",
                    opt == ':' ? "missing value for" : "unknown option",
                    argv[optind - 1]);
            goto usage;
        }
        for (size_t i = 0; i < N_SETTINGS; i++) {
            if (settings[i].opt == opt &&
                apply(cfg, opt, settings[i].flag, optarg) < 0)
                return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "meshsyncd: unexpected argument '%s'\n", argv[optind]);
        goto usage;
    }
    return validate(cfg);

usage:
    fputs("Try 'meshsyncd --help' for more information.\n", stderr);
    return -1;
}


void ms_config_free(ms_config_t *cfg)
{
    free(cfg->socket_path);
    free(cfg->redis_url);
    free(cfg->redis_password);
    free(cfg->cache_path);
    free(cfg->prefix);
    free(cfg->instance_id);
    memset(cfg, 0, sizeof(*cfg));
}
