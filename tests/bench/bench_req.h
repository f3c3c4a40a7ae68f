/*
 * bench_req.h - what meshsync-bench sends, encoded before any timing:
 * entry ids and values (the same metadata as JSON text for Redis and as
 * msgpack for meshsync), and pools of ready-to-send requests: meshsync
 * frames (conn.get, conn.set, watch, ...) and RESP commands (HGET,
 * EVALSHA of write.lua with the daemon's exact arguments, PUBLISH).
 * Bench process, single-threaded.
 */
#ifndef BENCH_REQ_H
#define BENCH_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum bench_kind_e { BENCH_CONN, BENCH_ROOM } bench_kind_t;

/* Requests one after another in one buffer: request i is off[i]..off[i+1]. */
typedef struct bench_reqs_s {
    char *buf;
    size_t len;
    size_t cap;
    size_t *off; /* n + 1 offsets */
    size_t n;
    size_t max;
} bench_reqs_t;

/* What write.lua needs besides the entry: see schema/write.lua. */
typedef struct bench_script_s {
    char sha[41];
    char instance[80]; /* ARGV[9], the writer */
} bench_script_t;

int bench_reqs_init(bench_reqs_t *r, size_t max);
void bench_reqs_free(bench_reqs_t *r);

static inline const char *bench_reqs_at(const bench_reqs_t *r, size_t i,
                                        size_t *len)
{
    i %= r->n;
    *len = r->off[i + 1] - r->off[i];
    return r->buf + r->off[i];
}

/* "c000123" or "r000123". */
void bench_req_id(bench_kind_t kind, size_t i, char *out, size_t size);

/*
 * The metadata of entry i, variant v (each variant is a different value
 * of the same shape), about bytes long as JSON, written to out (with a
 * NUL). Returns its length, or 0 when it does not fit.
 */
size_t bench_value_json(bench_kind_t kind, size_t i, unsigned v, size_t bytes,
                        char *out, size_t size);

/* --- meshsync frames (4-byte length, msgpack map) ----------------------- */

/* {id, op: "conn.get"/"room.get", conn/room: id}. */
int bench_reqs_get(bench_reqs_t *r, bench_kind_t kind, const char *id,
                   uint64_t rid);

/* {id, op: "conn.set", conn, value: entry i variant v, strategy}. */
int bench_reqs_set(bench_reqs_t *r, size_t i, unsigned v, size_t bytes,
                   const char *strategy, uint64_t rid);

/* {id, op: "watch", all: true}. */
int bench_reqs_watch_all(bench_reqs_t *r, uint64_t rid);

/* --- RESP ------------------------------------------------------------------
 */

/* HGET of the entry's value, as Mesh stores it (REDIS.md). */
int bench_reqs_hget(bench_reqs_t *r, bench_kind_t kind, const char *id);

/*
 * EVALSHA write.lua: replace (check "any", op "set") of entry i variant
 * v, as one RESP command in *cmd (*len bytes; the caller frees it with
 * redisFreeCommand()).
 */
int bench_req_evalsha_cmd(const bench_script_t *s, bench_kind_t kind, size_t i,
                          unsigned v, size_t bytes, char **cmd, size_t *len);

/* The same command, added to a pool. */
int bench_reqs_evalsha(bench_reqs_t *r, const bench_script_t *s,
                       bench_kind_t kind, size_t i, unsigned v, size_t bytes);

/* PUBLISH channel "<seq, 10 digits><padding>", len bytes in all. */
int bench_reqs_publish(bench_reqs_t *r, const char *channel, uint64_t seq,
                       size_t len);

/* SUBSCRIBE channel. */
int bench_reqs_subscribe(bench_reqs_t *r, const char *channel);

/* The sequence number at the front of a PUBLISH payload. */
uint64_t bench_req_payload_seq(const char *p, size_t len);

#endif
