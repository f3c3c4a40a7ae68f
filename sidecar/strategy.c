/*
 * strategy.c - Mesh's update strategies (replace, merge, deepMerge) on
 * Jansson values, with the same results as Mesh's JavaScript.
 *
 * Entry points: ms_strategy_parse, ms_strategy_name, ms_strategy_apply.
 * Pure functions; the daemon's loop thread calls them on the write path.
 */
#include "strategy.h"

#include <assert.h>
#include <string.h>

#include "alloc.h"

static const char *const strategy_names[] = {
    [MS_STRATEGY_REPLACE] = "replace",
    [MS_STRATEGY_MERGE] = "merge",
    [MS_STRATEGY_DEEP_MERGE] = "deepMerge",
};

#define N_STRATEGIES (sizeof(strategy_names) / sizeof(strategy_names[0]))

int ms_strategy_parse(const char *s, size_t len, ms_strategy_t *out)
{
    for (size_t i = 0; i < N_STRATEGIES; i++) {
        const char *name = strategy_names[i];

        if (strlen(name) == len && memcmp(name, s, len) == 0) {
            *out = (ms_strategy_t)i;
            return 0;
        }
    }
    return MS_EINVAL;
}


const char *ms_strategy_name(ms_strategy_t s)
{
    if ((size_t)s >= N_STRATEGIES)
        return "unknown";
    return strategy_names[s];
}


/* Jansson's reference counting takes non-const pointers. */
static json_t *share(const json_t *v)
{
    return json_incref((json_t *)v);
}


/* A new object holding the same members, like JavaScript's {...obj}. */
static json_t *shallow_copy(const json_t *obj)
{
    json_t *copy = json_copy((json_t *)obj);

    if (copy == NULL)
        ms_oom();
    return copy;
}


static json_t *merge(const json_t *current, const json_t *update)
{
    json_t *result;

    if (!json_is_object(current) || !json_is_object(update))
        return share(update);

    /* Existing keys keep their place and new ones follow, as in JS. */
    result = shallow_copy(current);
    if (json_object_update(result, (json_t *)update) != 0)
        ms_oom();
    return result;
}


static json_t *deep_merge(const json_t *target, const json_t *source)
{
    json_t *src = (json_t *)source;
    json_t *result;

    if (!json_is_object(target) || !json_is_object(source))
        return share(source);

    result = shallow_copy(target);
    for (void *it = json_object_iter(src); it != NULL;
         it = json_object_iter_next(src, it)) {
        const char *key = json_object_iter_key(it);
        size_t key_len = json_object_iter_key_len(it);
        json_t *theirs = json_object_iter_value(it);
        json_t *ours = json_object_getn(result, key, key_len);
        /* ours is NULL for a new key: then theirs is taken as it is. */
        json_t *merged = deep_merge(ours, theirs);

        if (json_object_setn_new_nocheck(result, key, key_len, merged) != 0)
            ms_oom();
    }
    return result;
}


json_t *ms_strategy_apply(ms_strategy_t s, const json_t *current,
                          const json_t *update)
{
    assert(update != NULL);
    if (json_is_null(update))
        return NULL;

    switch (s) {
    case MS_STRATEGY_MERGE:
        return merge(current, update);
    case MS_STRATEGY_DEEP_MERGE:
        return deep_merge(current, update);
    case MS_STRATEGY_REPLACE:
        break;
    }
    return share(update);
}
