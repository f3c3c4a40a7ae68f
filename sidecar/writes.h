/*
 * writes.h - the write pipeline: applies a strategy, stores the result in
 * Redis through schema/write.lua, then in the local cache, then answers.
 *
 * Writes to one entry from this sidecar run one at a time in arrival
 * order, each computed from the result of the one before, so pipelined
 * merges on one entry never conflict with each other. A merge is written
 * with compare-and-set against the value it was computed from; when
 * another sidecar (or a Mesh server) changed the entry meanwhile, the
 * script returns the current value and the merge is recomputed from it,
 * up to the configured number of attempts. Loop thread only.
 */
#ifndef MS_WRITES_H
#define MS_WRITES_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "strategy.h"

/*
 * Called once per write: code 0 with the entry's new version, or a
 * negative MS_E* code and a message. May be called before
 * ms_writes_submit() returns. It must not submit writes itself: the
 * pipeline is half-way through its queue when it calls.
 */
typedef void (*ms_write_done_cb)(void *arg, int code, const char *msg,
                                 uint64_t version);

void ms_writes_init(ms_app_t *app);

/*
 * At shutdown, after app->redis is set to NULL and closed: answers the
 * writes that are not in flight with "unavailable". Their timers close on
 * the loop; ms_writes_free() may follow once the loop has ended.
 */
void ms_writes_close(ms_app_t *app);
void ms_writes_free(ms_app_t *app);

/*
 * If the write under way for an entry is storing exactly this JSON text,
 * points *mp at the same value as msgpack (valid until the write ends)
 * and returns true. A write's own change message comes back on the
 * subscriber link before the script's reply: this spares converting it.
 */
bool ms_writes_own_value(ms_app_t *app, ms_kind_t kind, const char *id,
                         size_t id_len, const char *json, size_t json_len,
                         const char **mp, size_t *mp_len);

/*
 * The mirror applied a change to an entry: a write waiting for another
 * sidecar's turn on it goes now.
 */
void ms_writes_entry_changed(ms_app_t *app, ms_kind_t kind, const char *id,
                             size_t id_len);

/*
 * Queues a write of update (ownership taken; NULL deletes the entry) to
 * the entry kind/id with the strategy.
 */
void ms_writes_submit(ms_app_t *app, ms_kind_t kind, const char *id,
                      size_t id_len, ms_strategy_t strategy, json_t *update,
                      ms_write_done_cb cb, void *arg);

/*
 * One call of schema/write.lua, for the pipeline and for the scrub's
 * adoptions: the entry (hash_key and turn_key may be given, else they are
 * built), the check ("any", "absent", "equal", "adopt") with the expected
 * text base (or NULL), the op ("set", "del", "close") with the new text
 * json (or NULL), and for a close the expected owner (or NULL). Strings
 * with a length need no NUL. Returns 0 (cb will be called), or
 * MS_EUNAVAIL.
 */
typedef struct ms_write_call_s {
    ms_kind_t kind;
    const char *id;
    size_t id_len;
    const char *hash_key;
    size_t hash_key_len;
    const char *turn_key;
    size_t turn_key_len;
    const char *check;
    const char *base;
    size_t base_len;
    const char *op;
    const char *json;
    size_t json_len;
    const char *owner;
} ms_write_call_t;

int ms_writes_call(ms_app_t *app, const ms_write_call_t *w,
                   ms_redis_reply_cb cb, void *arg) MS_MUST_CHECK;

/*
 * Queues a connection's close: its metadata's delete, in the same step
 * as its removal from Mesh's registry and from its rooms (schema/
 * write.lua, "close"). With owner (copied), only while the connection is
 * that instance's or nobody's: else it ends with MS_ECONFLICT, nothing
 * done.
 */
void ms_writes_close_conn(ms_app_t *app, const char *id, size_t id_len,
                          const char *owner, ms_write_done_cb cb, void *arg);

#endif
