/*
 * server.h - the Unix-socket server: accepts clients, cuts their byte
 * streams into frames for the request handlers, and sends replies.
 *
 * Replies are appended to a session's output buffer and written once per
 * loop turn, so a pipelined burst costs one write(2), not one per reply.
 * A client whose unsent output passes a high-water mark is not read from
 * until it drains, so a client that stops reading cannot grow memory.
 *
 * A session is reference-counted: a request waiting on Redis holds a
 * reference, so its session outlives a client that hangs up meanwhile;
 * replies to a closed session are dropped. Loop thread only.
 */
#ifndef MS_SERVER_H
#define MS_SERVER_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#include "app.h"
#include "error.h"

typedef struct ms_session_s ms_session_t;

/*
 * Listens on app->cfg->socket_path. A socket file left by a crashed run
 * is replaced; a live daemon on the path, or a path that is not a socket,
 * is an error. Returns 0 and sets app->server, or a negative code with a
 * message in err.
 */
int ms_server_start(ms_app_t *app, ms_error_t *err) MS_MUST_CHECK;

/*
 * The first step of a clean stop: stops listening, removes the socket
 * file, and reads no more requests; each session is closed once every
 * request it sent has been answered and the answers are written.
 * ms_server_sessions() tells how many are still finishing.
 */
void ms_server_drain(ms_server_t *s);
size_t ms_server_sessions(const ms_server_t *s);

/*
 * Stops listening, removes the socket file and closes every session,
 * answered or not. Memory is released in the uv close callbacks.
 */
void ms_server_close(ms_server_t *s);

/*
 * The zone a request of this session is decoded into (reused, so that a
 * request costs no allocation); ms_session_zone_done() empties it once
 * the request of frame_len bytes has been handled.
 */
msgpack_zone *ms_session_zone(ms_session_t *s);
void ms_session_zone_done(ms_session_t *s, size_t frame_len);

/*
 * Starts a reply frame in the session's output and returns the packer to
 * pack one map into; ms_session_reply_end() completes the frame.
 */
msgpack_packer *ms_session_reply_begin(ms_session_t *s);
void ms_session_reply_end(ms_session_t *s);

void ms_session_ref(ms_session_t *s);
void ms_session_unref(ms_session_t *s);

/*
 * A request that will be answered later (it waits on Redis or on the
 * mirror) holds its session: a reference, and a count that pauses the
 * client's input while too many are outstanding. reply_bytes is how large
 * its reply may be (a value's worth for reads, 0 for small replies): it
 * counts against the client's output limit until the request is released,
 * so that replies made later cannot outgrow that limit either. Release
 * with the same reply_bytes when answered.
 */
void ms_session_hold(ms_session_t *s, size_t reply_bytes);
void ms_session_release(ms_session_t *s, size_t reply_bytes);

/* True once the client has gone or been closed. */
bool ms_session_closed(const ms_session_t *s);

/* The connection id bound by `hello`, or NULL (with *len 0). */
const char *ms_session_conn(const ms_session_t *s, size_t *len);
void ms_session_bind(ms_session_t *s, const char *conn, size_t len);

/*
 * Output the client has not taken yet: replies buffered in the session
 * and bytes libuv still queues for the socket (0 once closed).
 */
size_t ms_session_unsent(const ms_session_t *s);

/* The unsent output past which a client's requests are left unread. */
size_t ms_session_output_limit(void);

/*
 * Closes a session for a policy reason (a watcher that does not read):
 * logged once at warn with the client's number and the reason, then
 * closed like a client that went away; what it had not read is dropped.
 */
void ms_session_cut(ms_session_t *s, const char *reason);


#endif
