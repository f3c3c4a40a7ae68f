/*
 * registry.h - Mesh's connection registry and instance liveness: connections
 * opened through this sidecar, its heartbeat, and the reaping of dead
 * instances. Loop thread only.
 */
#ifndef MS_REGISTRY_H
#define MS_REGISTRY_H

#include "handlers.h"

/* The operations of this module (see handlers.h). */
extern const ms_op_t ms_registry_ops[];

/* Session s has ended: the connections it opened with bind go with it. */
void ms_registry_session_closed(ms_app_t *app, ms_session_t *s);

#endif
