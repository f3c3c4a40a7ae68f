/*
 * strategy.h - Mesh's three update strategies for metadata values.
 *
 *   replace    the update becomes the value.
 *   merge      when both the stored value and the update are objects, a
 *              top-level merge (the update's keys win); otherwise replace.
 *   deepMerge  objects merge recursively; arrays and every non-object
 *              value in the update replace what was there; a null inside
 *              the update sets that key to null; an empty object in the
 *              update leaves the stored object as it was.
 *
 * A whole-value null update clears the entry with every strategy. Pure
 * functions; the daemon's loop thread uses them on the write path.
 */
#ifndef MS_STRATEGY_H
#define MS_STRATEGY_H

#include <jansson.h>
#include <stddef.h>

#include "error.h"

typedef enum {
    MS_STRATEGY_REPLACE = 0,
    MS_STRATEGY_MERGE,
    MS_STRATEGY_DEEP_MERGE
} ms_strategy_t;

/* Parses "replace", "merge" or "deepMerge" (exact case). 0 or MS_EINVAL. */
int ms_strategy_parse(const char *s, size_t len,
                      ms_strategy_t *out) MS_MUST_CHECK;

const char *ms_strategy_name(ms_strategy_t s);

/*
 * Applies update to current (NULL when the entry is absent) and returns a
 * new reference to the result, or NULL when the result clears the entry
 * (update is JSON null). Neither argument is modified; the result may
 * share unmodified subtrees with them. Aborts on out-of-memory through
 * ms_oom(), as the daemon does.
 */
json_t *ms_strategy_apply(ms_strategy_t s, const json_t *current,
                          const json_t *update);

#endif
