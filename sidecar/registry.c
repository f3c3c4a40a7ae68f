/*
 * registry.c - see registry.h. Loop thread only.
 */
#include "registry.h"

const ms_op_t ms_registry_ops[] = {
    {NULL, NULL},
};


void ms_registry_session_closed(ms_app_t *app, ms_session_t *s)
{
    (void)app;
    (void)s;
}
