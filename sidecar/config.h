/*
 * config.h - meshsyncd's settings, from command-line flags and MESHSYNC_*
 * environment variables (a flag wins over its variable).
 *
 * ms_config_load() fills an ms_config_t from argv and the environment and
 * validates it; it runs once at start-up, before the loop.
 */
#ifndef MS_CONFIG_H
#define MS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "log.h"

#define MS_DEFAULT_SOCKET "/run/meshsync/meshsync.sock"
#define MS_DEFAULT_REDIS  "redis://127.0.0.1:6379"
#define MS_DEFAULT_CACHE  "/var/lib/meshsync/cache.db"
#define MS_DEFAULT_PREFIX "mesh"

typedef struct ms_config_s {
    char *socket_path;
    unsigned socket_mode; /* permission bits of the socket file */
    char *redis_url;
    int redis_db;         /* the database the URL names */
    char *redis_password; /* NULL for none; never logged */
    char *cache_path;
    char *prefix;
    char *instance_id;
    ms_log_level_t log_level;
    size_t max_frame;        /* bytes of a frame body */
    size_t max_value;        /* bytes of a value as JSON text */
    int max_depth;           /* nesting of a value */
    size_t max_id;           /* bytes of a connection id or room name */
    unsigned merge_retries;  /* compare-and-set attempts per merge */
    unsigned redis_timeout;  /* ms a Redis command may take */
    unsigned backoff_min;    /* ms, first reconnect delay (cap) */
    unsigned backoff_max;    /* ms, largest reconnect delay */
    unsigned log_length;     /* changes the Redis change log keeps */
    unsigned scrub_interval; /* ms between scrub passes; 0: no scrub */
    unsigned heartbeat;      /* ms between heartbeats */
    unsigned heartbeat_ttl;  /* ms a heartbeat lasts */
    unsigned reap_interval;  /* ms between looks for dead instances */
    unsigned history_check;  /* ms between checks of Redis's history; 0 off */
    bool close_on_exit;      /* SIGTERM closes our connections */
} ms_config_t;

/*
 * Parses argv and the environment into cfg. Returns 0 to run, 1 when
 * --help or --version was printed (exit 0), or -1 after printing a usage
 * error to stderr (exit 2). Release with ms_config_free().
 */
int ms_config_load(ms_config_t *cfg, int argc, char **argv);
void ms_config_free(ms_config_t *cfg);

#endif
