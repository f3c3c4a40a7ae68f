/*
 * hiredis_uv.h - runs a hiredis async context on a libuv loop.
 *
 * Debian's hiredis 0.14 ships an adapter for this, but it ignores a poll
 * that fails: when Redis closes a connection with our commands still
 * unread, the socket reports an error, libuv stops the poll and reports
 * it, and that adapter returns without letting hiredis see the error, so
 * the link hangs for good, neither up nor reported down. This one hands
 * every poll result to hiredis, which then reads the error and
 * disconnects. Loop thread only.
 */
#ifndef MS_HIREDIS_UV_H
#define MS_HIREDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

/*
 * Attaches ac to loop. The poll handle is released by hiredis's cleanup
 * hook when the context goes: closed on the loop and freed in its close
 * callback. Returns REDIS_OK or REDIS_ERR (nothing attached).
 */
int ms_hiredis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
