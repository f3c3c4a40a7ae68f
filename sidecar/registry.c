/*
 * registry.c - see registry.h. Loop thread only.
 */
#include "registry.h"

const ms_op_t ms_registry_ops[] = {
    {NULL, NULL},
};
