/*
 * hiredis_uv.c - hiredis's event hooks on a uv_poll_t (see hiredis_uv.h).
 */
#include "hiredis_uv.h"

#include <stdlib.h>

typedef struct poller_s {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis has let go */
    int events;            /* UV_READABLE | UV_WRITABLE that hiredis wants */
} poller_t;

static void on_poll(uv_poll_t *h, int status, int events)
{
    poller_t *p = h->data;

    /*
     * On a socket error libuv reports status < 0, no events, and stops
     * the poll. Let hiredis try what it wanted: its read or write then
     * fails and it tears the connection down, calling every callback.
     */
    if (status < 0)
        events = p->events;
    if (p->ac != NULL && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);

    /* Still connected after an error report: watch the socket again. */
    if (status < 0 && p->ac != NULL && p->events != 0)
        uv_poll_start(&p->poll, p->events, on_poll);
}


static void update(poller_t *p, int add, int del)
{
    p->events = (p->events | add) & ~del;
    if (p->events != 0)
        uv_poll_start(&p->poll, p->events, on_poll);
    else
        uv_poll_stop(&p->poll);
}


static void add_read(void *arg)
{
    update(arg, UV_READABLE, 0);
}


static void del_read(void *arg)
{
    update(arg, 0, UV_READABLE);
}


static void add_write(void *arg)
{
    update(arg, UV_WRITABLE, 0);
}


static void del_write(void *arg)
{
    update(arg, 0, UV_WRITABLE);
}


static void on_closed(uv_handle_t *h)
{
    free(h->data);
}


static void cleanup(void *arg)
{
    poller_t *p = arg;

    p->ac = NULL;
    uv_close((uv_handle_t *)&p->poll, on_closed);
}


int ms_hiredis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    poller_t *p;

    if (ac->ev.data != NULL)
        return REDIS_ERR;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return REDIS_ERR;
    if (uv_poll_init(loop, &p->poll, ac->c.fd) != 0) {
        free(p);
        return REDIS_ERR;
    }
    p->poll.data = p;
    p->ac = ac;

    ac->ev.data = p;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return REDIS_OK;
}
