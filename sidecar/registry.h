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

#endif
