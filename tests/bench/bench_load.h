/*
 * bench_load.h - meshsync-bench's data in Redis: loading schema/write.lua,
 * storing entries through it (pipelined EVALSHA, so versions, digests,
 * the change log and the sequence are what the daemon's writes leave),
 * FLUSHALL, and the evalsha call count of INFO commandstats. Bench
 * process, single-threaded, on a synchronous hiredis context.
 */
#ifndef BENCH_LOAD_H
#define BENCH_LOAD_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "bench_req.h"

/*
 * Reads the script at path, SCRIPT LOADs it (s->sha) and names the writer
 * (s->instance: "<hostname>-<pid>", the form of the daemon's default).
 */
int bench_load_script(redisContext *c, const char *path, bench_script_t *s);

/*
 * Stores connections 0..conns-1 and rooms 0..rooms-1 (variant 0, about
 * bytes each) with write.lua's replace, about 1000 calls in flight.
 * Fails on the first reply that is not {1, version}.
 */
int bench_load_entries(redisContext *c, const bench_script_t *s, size_t conns,
                       size_t rooms, size_t bytes);

/* FLUSHALL (the scripts stay loaded). */
int bench_load_flush(redisContext *c);

/*
 * Empties the change log and takes a version nobody writes: a sidecar
 * whose position is older cannot catch up and loads everything.
 */
int bench_load_lose_log(redisContext *c);

/* cmdstat_evalsha's calls from INFO commandstats (0 when none yet). */
int bench_load_evalsha_calls(redisContext *c, uint64_t *calls);

#endif
