/*
 * bench_load.c - script loading, bulk loading through write.lua and Redis
 * statistics (see bench_load.h). Entry points: bench_load_script(),
 * bench_load_entries(), bench_load_flush(), bench_load_evalsha_calls().
 * Bench process, single-threaded; never inside a timed region.
 *
 * The load keeps between WINDOW/2 and WINDOW calls in flight: hiredis
 * writes what was appended whenever it must read, so each round trip
 * carries a few hundred calls and Redis never waits for the bench.
 */
#include "bench_load.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_proc.h"
#include "error.h"

#define WINDOW     1000
#define SCRIPT_MAX (256u * 1024)

int bench_load_script(redisContext *c, const char *path, bench_script_t *s)
{
    char host[64] = "localhost";
    char *text = malloc(SCRIPT_MAX);
    FILE *f = fopen(path, "rb");
    redisReply *rep = NULL;
    size_t n = 0;
    int rc = MS_EIO;

    if (text == NULL || f == NULL)
        goto done;
    n = fread(text, 1, SCRIPT_MAX, f);
    if (n == 0 || n == SCRIPT_MAX)
        goto done;
    rep = redisCommand(c, "SCRIPT LOAD %b", text, n);
    if (rep == NULL || rep->type != REDIS_REPLY_STRING || rep->len != 40)
        goto done;
    memcpy(s->sha, rep->str, 40);
    s->sha[40] = '\0';
    gethostname(host, sizeof(host) - 1);
    snprintf(s->instance, sizeof(s->instance), "%s-%d", host, (int)getpid());
    rc = 0;

done:
    if (rc < 0)
        fprintf(stderr, "bench: cannot SCRIPT LOAD %s\n", path);
    if (rep != NULL)
        freeReplyObject(rep);
    if (f != NULL)
        fclose(f);
    free(text);
    return rc;
}


/* Appends write.lua's call for the i-th entry of the load. */
static int append_entry(redisContext *c, const bench_script_t *s, size_t i,
                        size_t conns, size_t bytes)
{
    bench_kind_t kind = i < conns ? BENCH_CONN : BENCH_ROOM;
    char *cmd = NULL;
    size_t len;
    int rc;

    rc = bench_req_evalsha_cmd(s, kind, i < conns ? i : i - conns, 0, bytes,
                               &cmd, &len);
    if (rc < 0)
        return rc;
    rc = redisAppendFormattedCommand(c, cmd, len) == REDIS_OK ? 0 : MS_EIO;
    redisFreeCommand(cmd);
    return rc;
}


/* {1, version}: stored. */
static bool written(const redisReply *r)
{
    return r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
           r->element[0]->type == REDIS_REPLY_INTEGER &&
           r->element[0]->integer == 1;
}


int bench_load_entries(redisContext *c, const bench_script_t *s, size_t conns,
                       size_t rooms, size_t bytes)
{
    size_t total = conns + rooms, sent = 0;

    for (size_t got = 0; got < total; got++) {
        redisReply *r = NULL;
        bool ok;

        if (sent - got <= WINDOW / 2) {
            for (; sent < total && sent - got < WINDOW; sent++) {
                if (append_entry(c, s, sent, conns, bytes) < 0)
                    return MS_EIO;
            }
        }
        if (bench_proc_interrupted() ||
            redisGetReply(c, (void **)&r) != REDIS_OK || r == NULL) {
            fprintf(stderr, "bench: load: %s\n",
                    c->err ? c->errstr : "interrupted");
            return MS_EIO;
        }
        ok = written(r);
        if (!ok)
            fprintf(stderr, "bench: load: write.lua refused entry %zu: %s\n",
                    got, r->type == REDIS_REPLY_ERROR ? r->str : "?");
        freeReplyObject(r);
        if (!ok)
            return MS_EPROTO;
    }
    return 0;
}


int bench_load_flush(redisContext *c)
{
    redisReply *r = redisCommand(c, "FLUSHALL");
    int rc = r != NULL && r->type == REDIS_REPLY_STATUS ? 0 : MS_EIO;

    if (r != NULL)
        freeReplyObject(r);
    return rc;
}


int bench_load_lose_log(redisContext *c)
{
    static const char *const cmds[] = {"XTRIM mesh:meshsync:log MAXLEN 0",
                                       "INCR mesh:meshsync:seq"};
    int rc = 0;

    for (size_t i = 0; i < 2 && rc == 0; i++) {
        redisReply *r = redisCommand(c, cmds[i]);

        rc = r != NULL && r->type == REDIS_REPLY_INTEGER ? 0 : MS_EIO;
        if (r != NULL)
            freeReplyObject(r);
    }
    return rc;
}


int bench_load_evalsha_calls(redisContext *c, uint64_t *calls)
{
    static const char field[] = "cmdstat_evalsha:calls=";
    redisReply *r = redisCommand(c, "INFO commandstats");
    const char *p;
    int rc = MS_EIO;

    if (r != NULL && r->type == REDIS_REPLY_STRING) {
        p = strstr(r->str, field);
        *calls = p != NULL ? strtoull(p + sizeof(field) - 1, NULL, 10) : 0;
        rc = 0;
    }
    if (r != NULL)
        freeReplyObject(r);
    return rc;
}
