/*
 * watch.c - see watch.h. Loop thread only.
 */
#include "watch.h"

const ms_op_t ms_watch_ops[] = {
    {NULL, NULL},
};


void ms_watch_session_closed(ms_app_t *app, ms_session_t *s)
{
    (void)app;
    (void)s;
}
