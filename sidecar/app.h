/*
 * app.h - the daemon's shared state: what every request handler, the
 * write pipeline and the mirror reach through one pointer. main.c owns it;
 * everything in it lives on the loop thread.
 */
#ifndef MS_APP_H
#define MS_APP_H

#include <uv.h>

#include "cache.h"
#include "config.h"
#include "layout.h"
#include "redis.h"
#include "value.h"

typedef struct ms_server_s ms_server_t;
typedef struct ms_mirror_s ms_mirror_t;
typedef struct ms_writes_s ms_writes_t;
typedef struct ms_waits_s ms_waits_t;
typedef struct ms_scrub_s ms_scrub_t;
typedef struct ms_registry_s ms_registry_t;
typedef struct ms_watch_s ms_watch_t;

typedef struct ms_app_s {
    uv_loop_t *loop;
    const ms_config_t *cfg;
    ms_layout_t layout;
    ms_value_limits_t limits;
    ms_cache_t *cache;
    ms_redis_t *redis;
    ms_mirror_t *mirror;
    ms_writes_t *writes;
    ms_server_t *server;
    ms_waits_t *waits;       /* reads waiting for a version (waits.c) */
    ms_scrub_t *scrub;       /* NULL when the scrub is off (scrub.c) */
    ms_registry_t *registry; /* Mesh's registry (registry.c) */
    ms_watch_t *watch;       /* the change feed (watch.c) */
} ms_app_t;

#endif
