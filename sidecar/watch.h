/*
 * watch.h - push frames of changes to sessions that asked for them (the watch
 * and unwatch operations). Loop thread only.
 */
#ifndef MS_WATCH_H
#define MS_WATCH_H

#include "handlers.h"

/* The operations of this module (see handlers.h). */
extern const ms_op_t ms_watch_ops[];

/* Session s has ended: its watches go with it. */
void ms_watch_session_closed(ms_app_t *app, ms_session_t *s);

#endif
