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

/* Packed: a hundred thousand entries make every byte here count. */
typedef struct __attribute__((packed)) entry_s {
    uint64_t version;
    uint32_t mp_len;
    uint32_t id_len;
    uint16_t gen; /* the index's generation when last put, mod 2^16 */
    uint8_t kind : 1;
    uint8_t present : 1;
    uint8_t dirty : 1;
    char data[]; /* id_len bytes of id, then mp_len bytes of value */
} entry_t;

struct ms_index_s {
    entry_t **slots;
    size_t mask; /* number of slots - 1; a power of two */
    size_t count;
    size_t live[2]; /* entries with a value, of kinds 0 and 1 */
    uint16_t gen;   /* stamped on every entry put */
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


static bool entry_is(const entry_t *e, unsigned kind, const char *id,
                     size_t len)
{
    return e->id_len == len && e->kind == kind && memcmp(e->data, id, len) == 0;
}


/* The slot holding (kind, id), or the empty slot where it would go. */
static size_t slot_of(const ms_index_t *ix, uint32_t hash, unsigned kind,
                      const char *id, size_t len)
{
    size_t i = hash & ix->mask;

    while (ix->slots[i] != NULL && !entry_is(ix->slots[i], kind, id, len))
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
    v->dirty = e->dirty;
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
        j = hash_key(old[i]->kind, old[i]->data, old[i]->id_len) & ix->mask;
        while (ix->slots[j] != NULL)
            j = (j + 1) & ix->mask;
        ix->slots[j] = old[i];
    }
    free(old);
}


void ms_index_put(ms_index_t *ix, unsigned kind, const char *id, size_t id_len,
                  uint64_t version, const char *mp, size_t mp_len,
                  unsigned flags)
{
    uint32_t hash = hash_key(kind, id, id_len);
    size_t i = slot_of(ix, hash, kind, id, id_len);
    entry_t *e = ix->slots[i];
    bool was_present = e != NULL && e->present;

    if (e != NULL && (flags & MS_INDEX_ONLY_NEW))
        return;
    if (mp == NULL)
        mp_len = 0;
    if (e != NULL && (flags & MS_INDEX_KEEP_SAME) && e->version == version &&
        e->present == (mp != NULL) && e->mp_len == mp_len &&
        (mp_len == 0 || memcmp(e->data + id_len, mp, mp_len) == 0)) {
        e->gen = ix->gen;
        return;
    }

    if (e == NULL) {
        grow(ix);
        i = slot_of(ix, hash, kind, id, id_len);
        e = ms_malloc(offsetof(entry_t, data) + id_len + mp_len);
        e->kind = kind & 1u;
        e->id_len = (uint32_t)id_len;
        memcpy(e->data, id, id_len);
        ix->count++;
    } else if (e->mp_len != mp_len) {
        e = ms_realloc(e, offsetof(entry_t, data) + id_len + mp_len);
    }
    ix->slots[i] = e;

    if (kind < 2 && was_present != (mp != NULL)) {
        if (was_present)
            ix->live[kind]--;
        else
            ix->live[kind]++;
    }
    e->version = version;
    e->gen = ix->gen;
    e->present = mp != NULL;
    e->dirty = (flags & MS_INDEX_DIRTY) != 0;
    e->mp_len = (uint32_t)mp_len;
    if (mp_len > 0)
        memcpy(e->data + id_len, mp, mp_len);
}


void ms_index_clean(ms_index_t *ix, unsigned kind, const char *id,
                    size_t id_len)
{
    uint32_t hash = hash_key(kind, id, id_len);
    entry_t *e = ix->slots[slot_of(ix, hash, kind, id, id_len)];

    if (e != NULL)
        e->dirty = 0;
}


void ms_index_set_gen(ms_index_t *ix, uint32_t gen)
{
    ix->gen = (uint16_t)gen;
}


size_t ms_index_sweep(ms_index_t *ix, uint64_t seq)
{
    size_t gone = 0;

    for (size_t i = 0; i <= ix->mask; i++) {
        entry_t *e = ix->slots[i];

        if (e == NULL || e->gen == ix->gen || e->version > seq ||
            (!e->present && e->version == seq))
            continue;
        if (e->present) {
            if (e->kind < 2)
                ix->live[e->kind]--;
            gone++;
        }
        e->present = 0;
        e->mp_len = 0;
        e->version = seq;
        e->gen = ix->gen;
        e->dirty = 1;
    }
    return gone;
}


void ms_index_dirty_all(ms_index_t *ix)
{
    for (size_t i = 0; i <= ix->mask; i++) {
        if (ix->slots[i] != NULL)
            ix->slots[i]->dirty = 1;
    }
}


size_t ms_index_count_live(const ms_index_t *ix, unsigned kind)
{
    return kind < 2 ? ix->live[kind] : 0;
}


uint64_t ms_index_max_version(const ms_index_t *ix)
{
    uint64_t max = 0;

    for (size_t i = 0; i <= ix->mask; i++) {
        const entry_t *e = ix->slots[i];

        if (e != NULL && e->version > max)
            max = e->version;
    }
    return max;
}


void ms_index_walk_dirty(const ms_index_t *ix, ms_index_key_cb fn, void *arg)
{
    for (size_t i = 0; i <= ix->mask; i++) {
        const entry_t *e = ix->slots[i];

        if (e != NULL && e->dirty)
            fn(arg, e->kind, e->data, e->id_len);
    }
}


/* Byte order, a prefix first: SQLite's BINARY collation. */
static int id_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int rc = n > 0 ? memcmp(a, b, n) : 0;

    if (rc != 0 || alen == blen)
        return rc;
    return alen < blen ? -1 : 1;
}


static int item_cmp(const ms_index_item_t *a, const ms_index_item_t *b)
{
    return id_cmp(a->id, a->id_len, b->id, b->id_len);
}


/* out[0..n) is a max-heap on id: restores it from slot i down. */
static void heap_down(ms_index_item_t *out, size_t n, size_t i)
{
    for (;;) {
        size_t big = i, l = 2 * i + 1, r = 2 * i + 2;
        ms_index_item_t t;

        if (l < n && item_cmp(&out[l], &out[big]) > 0)
            big = l;
        if (r < n && item_cmp(&out[r], &out[big]) > 0)
            big = r;
        if (big == i)
            return;
        t = out[i];
        out[i] = out[big];
        out[big] = t;
        i = big;
    }
}


static void heap_up(ms_index_item_t *out, size_t i)
{
    while (i > 0 && item_cmp(&out[(i - 1) / 2], &out[i]) < 0) {
        ms_index_item_t t = out[i];

        out[i] = out[(i - 1) / 2];
        out[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}


static int item_qsort_cmp(const void *a, const void *b)
{
    return item_cmp(a, b);
}


size_t ms_index_page(const ms_index_t *ix, unsigned kind, const char *after,
                     size_t after_len, size_t max, ms_index_item_t *out)
{
    size_t n = 0;

    /* Keeps the max smallest ids seen so far, the largest on top. */
    for (size_t i = 0; i <= ix->mask && max > 0; i++) {
        const entry_t *e = ix->slots[i];
        ms_index_item_t it;

        if (e == NULL || e->kind != kind || !e->present ||
            id_cmp(e->data, e->id_len, after, after_len) <= 0)
            continue;
        it.id = e->data;
        it.id_len = e->id_len;
        it.v.version = e->version;
        it.v.present = true;
        it.v.dirty = e->dirty;
        it.v.mp = e->data + e->id_len;
        it.v.mp_len = e->mp_len;
        if (n < max) {
            out[n] = it;
            heap_up(out, n++);
        } else if (item_cmp(&it, &out[0]) < 0) {
            out[0] = it;
            heap_down(out, n, 0);
        }
    }
    qsort(out, n, sizeof(*out), item_qsort_cmp);
    return n;
}


void ms_index_clear(ms_index_t *ix)
{
    for (size_t i = 0; i <= ix->mask; i++) {
        free(ix->slots[i]);
        ix->slots[i] = NULL;
    }
    ix->count = 0;
    ix->live[0] = ix->live[1] = 0;
}


size_t ms_index_count(const ms_index_t *ix)
{
    return ix->count;
}
