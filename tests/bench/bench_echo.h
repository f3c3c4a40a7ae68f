/*
 * bench_echo.h - baseline A of meshsync-bench, the physical floor: a
 * minimal libuv server on a Unix socket that answers every complete
 * frame it receives with one frame of a fixed size (that of a meshsync
 * conn.get hit reply), doing no other work. It runs in a forked child of
 * the bench, on that child's own loop.
 */
#ifndef BENCH_ECHO_H
#define BENCH_ECHO_H

#include <stddef.h>

/*
 * Serves the listening Unix socket listen_fd until the process is killed:
 * each read callback counts the complete frames received and answers them
 * with one uv_write of as many reply frames, each a msgpack map {id, ok:
 * true, pad} of exactly reply_size bytes. Returns only on a failure (a
 * negative code). Call it in the child only.
 */
int bench_echo_run(int listen_fd, size_t reply_size);

#endif
