/*
 * index.c - the cache's in-memory index (see index.h): an open-addressing
 * hash table with linear probing over one allocation per entry.
 *
 * An entry is a small header followed by the id's bytes and the value's
 * msgpack, so a lookup touches the slot array and one block of memory.
 * There are no removals (tombstones stay, as in SQLite), which keeps
 * probing simple: a slot once filled stays filled until a clear.
 */
#include "index.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

#define INDEX_MIN_SLOTS 1024

typedef struct entry_s {
    uint64_t version;
    uint32_t hash;
    uint32_t mp_len;
    uint32_t id_len;
    uint8_t kind;
    uint8_t present;
    char data[]; /* id_len bytes of id, then mp_len bytes of value */
} entry_t;

struct ms_index_s {
    entry_t **slots;
    size_t mask; /* number of slots - 1; a power of two */
    size_t count;
};


/* FNV-1a, 32 bits, over the kind and the id: ids are short. */
static uint32_t hash_key(unsigned kind, const char *id, size_t len)
{
    uint32_t h = 2166136261u;

    h = (h ^ (uint8_t)kind) * 16777619u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)id[i]) * 16777619u;
    return h;
}


static bool entry_is(const entry_t *e, uint32_t hash, unsigned kind,
                     const char *id, size_t len)
{
    return e->hash == hash && e->kind == kind && e->id_len == len &&
           memcmp(e->data, id, len) == 0;
}


/* The slot holding (kind, id), or the empty slot where it would go. */
static size_t slot_of(const ms_index_t *ix, uint32_t hash, unsigned kind,
                      const char *id, size_t len)
{
    size_t i = hash & ix->mask;

    while (ix->slots[i] != NULL && !entry_is(ix->slots[i], hash, kind, id, len))
        i = (i + 1) & ix->mask;
    return i;
}


ms_index_t *ms_index_new(void)
{
    ms_index_t *ix = ms_calloc(1, sizeof(*ix));

    ix->slots = ms_calloc(INDEX_MIN_SLOTS, sizeof(*ix->slots));
    ix->mask = INDEX_MIN_SLOTS - 1;
    return ix;
}


void ms_index_free(ms_index_t *ix)
{
    if (ix == NULL)
        return;
    ms_index_clear(ix);
    free(ix->slots);
    free(ix);
}


bool ms_index_find(const ms_index_t *ix, unsigned kind, const char *id,
                   size_t id_len, ms_index_view_t *v)
{
    uint32_t hash = hash_key(kind, id, id_len);
    const entry_t *e = ix->slots[slot_of(ix, hash, kind, id, id_len)];

    if (e == NULL)
        return false;
    v->version = e->version;
    v->present = e->present;
    v->mp = e->present ? e->data + e->id_len : NULL;
    v->mp_len = e->mp_len;
    return true;
}


/* Doubles the slot array once it is three quarters full. */
static void grow(ms_index_t *ix)
{
    size_t old_n = ix->mask + 1;
    entry_t **old = ix->slots;

    if (ix->count + 1 <= old_n / 4 * 3)
        return;
    ix->slots = ms_calloc(old_n * 2, sizeof(*ix->slots));
    ix->mask = old_n * 2 - 1;
    for (size_t i = 0; i < old_n; i++) {
        size_t j;

        if (old[i] == NULL)
            continue;
        j = old[i]->hash & ix->mask;
        while (ix->slots[j] != NULL)
            j = (j + 1) & ix->mask;
        ix->slots[j] = old[i];
    }
    free(old);
}


void ms_index_put(ms_index_t *ix, unsigned kind, const char *id, size_t id_len,
                  uint64_t version, const char *mp, size_t mp_len,
                  bool only_new)
{
    uint32_t hash = hash_key(kind, id, id_len);
    size_t i = slot_of(ix, hash, kind, id, id_len);
    entry_t *e = ix->slots[i];

    if (e != NULL && only_new)
        return;
    if (mp == NULL)
        mp_len = 0;

    if (e == NULL) {
        grow(ix);
        i = slot_of(ix, hash, kind, id, id_len);
        e = ms_malloc(offsetof(entry_t, data) + id_len + mp_len);
        e->hash = hash;
        e->kind = (uint8_t)kind;
        e->id_len = (uint32_t)id_len;
        memcpy(e->data, id, id_len);
        ix->count++;
    } else if (e->mp_len != mp_len) {
        e = ms_realloc(e, offsetof(entry_t, data) + id_len + mp_len);
    }
    ix->slots[i] = e;

    e->version = version;
    e->present = mp != NULL;
    e->mp_len = (uint32_t)mp_len;
    if (mp_len > 0)
        memcpy(e->data + id_len, mp, mp_len);
}


void ms_index_clear(ms_index_t *ix)
{
    for (size_t i = 0; i <= ix->mask; i++) {
        free(ix->slots[i]);
        ix->slots[i] = NULL;
    }
    ix->count = 0;
}


size_t ms_index_count(const ms_index_t *ix)
{
    return ix->count;
}
