/*
 * test_cache.c - unit tests for the SQLite cache (sidecar/cache.c): the
 * version guard in both modes, tombstones, exact bytes, resyncs, counts,
 * listing in id order, meta, transactions, warm restarts, corrupt and foreign
 * files, and that schema/cache.sql builds the schema the code builds.
 *
 * Tests run on ":memory:" or on files in a mkdtemp directory that the
 * teardown removes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "value.h"

typedef struct {
    char dir[64]; /* the temp directory, "" for :memory: tests */
    ms_cache_t *c;
} fixture_t;


static int setup_mem(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    ms_error_t err = {0};

    assert_non_null(f);
    assert_int_equal(ms_cache_open(":memory:", &f->c, &err), 0);
    *state = f;
    return 0;
}


static int setup_dir(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    strcpy(f->dir, "/tmp/test_cache.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    *state = f;
    return 0;
}


/* The directory holds only plain files this test created. */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[512];

    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        assert_int_equal(unlink(path), 0);
    }
    closedir(d);
    assert_int_equal(rmdir(dir), 0);
}


static int teardown(void **state)
{
    fixture_t *f = *state;

    ms_cache_close(f->c);
    if (f->dir[0] != '\0')
        remove_dir(f->dir);
    free(f);
    return 0;
}


static void dir_path(const fixture_t *f, const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", f->dir, name);
}


/*
 * ms_cache_get answers from memory, ms_cache_get_json from the file: the
 * two must agree. Returns ms_cache_get's result, with *e as the file's
 * (JSON included) when it worked.
 */
static int lookup(ms_cache_t *c, ms_kind_t kind, const char *id, size_t len,
                  ms_cache_entry_t *e)
{
    ms_cache_entry_t mem;
    int rc = ms_cache_get(c, kind, id, len, &mem);

    if (rc < 0)
        return rc;
    assert_null(mem.json);
    assert_int_equal(ms_cache_get_json(c, kind, id, len, e), 0);
    assert_int_equal(mem.version, e->version);
    assert_int_equal(mem.present, e->present);
    assert_int_equal(mem.mp_len, e->mp_len);
    if (e->present)
        assert_memory_equal(mem.mp, e->mp, e->mp_len);
    else
        assert_null(mem.mp);
    return rc;
}


/* A set of a connection; its mp is the JSON text, which is enough here. */
static int put(ms_cache_t *c, const char *id, uint64_t version,
               const char *json, ms_apply_mode_t mode)
{
    return ms_cache_apply(c, MS_KIND_CONN, id, strlen(id), version, json,
                          strlen(json), json, strlen(json), mode);
}


static int del(ms_cache_t *c, const char *id, uint64_t version,
               ms_apply_mode_t mode)
{
    return ms_cache_apply(c, MS_KIND_CONN, id, strlen(id), version, NULL, 0,
                          NULL, 0, mode);
}


/* Checks a connection's version and JSON (NULL: absent or tombstone). */
static void expect_conn(ms_cache_t *c, const char *id, uint64_t version,
                        const char *json)
{
    ms_cache_entry_t e;

    assert_int_equal(lookup(c, MS_KIND_CONN, id, strlen(id), &e), 0);
    assert_int_equal(e.version, version);
    if (json == NULL) {
        assert_false(e.present);
        assert_null(e.json);
        assert_null(e.mp);
        return;
    }
    assert_true(e.present);
    assert_int_equal(e.json_len, strlen(json));
    assert_memory_equal(e.json, json, e.json_len);
    assert_int_equal(e.json[e.json_len], '\0');
    assert_int_equal(e.mp_len, strlen(json));
    assert_memory_equal(e.mp, json, e.mp_len);
}


static void test_apply_newer(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;

    assert_int_equal(put(c, "a", 5, "\"five\"", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "a", 4, "\"four\"", MS_APPLY_NEWER), 0);
    assert_int_equal(put(c, "a", 5, "\"again\"", MS_APPLY_NEWER), 0);
    expect_conn(c, "a", 5, "\"five\"");

    assert_int_equal(put(c, "a", 6, "\"six\"", MS_APPLY_NEWER), 1);
    expect_conn(c, "a", 6, "\"six\"");
}


static void test_apply_not_older(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;

    assert_int_equal(put(c, "a", 5, "\"five\"", MS_APPLY_NOT_OLDER), 1);
    assert_int_equal(put(c, "a", 4, "\"four\"", MS_APPLY_NOT_OLDER), 0);
    expect_conn(c, "a", 5, "\"five\"");

    assert_int_equal(put(c, "a", 5, "\"again\"", MS_APPLY_NOT_OLDER), 1);
    expect_conn(c, "a", 5, "\"again\"");
    assert_int_equal(put(c, "a", 6, "\"six\"", MS_APPLY_NOT_OLDER), 1);
    expect_conn(c, "a", 6, "\"six\"");
}


static void test_apply_always(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;

    assert_int_equal(put(c, "a", 5, "\"five\"", MS_APPLY_ALWAYS), 1);
    assert_int_equal(put(c, "a", 3, "\"three\"", MS_APPLY_ALWAYS), 1);
    expect_conn(c, "a", 3, "\"three\"");
    assert_int_equal(put(c, "a", 3, "\"again\"", MS_APPLY_ALWAYS), 1);
    expect_conn(c, "a", 3, "\"again\"");

    /* It replaces a tombstone too, and writes one. */
    assert_int_equal(del(c, "b", 9, MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "b", 0, "\"b\"", MS_APPLY_ALWAYS), 1);
    expect_conn(c, "b", 0, "\"b\"");
    assert_int_equal(del(c, "a", 2, MS_APPLY_ALWAYS), 1);
    expect_conn(c, "a", 2, NULL);
}


static void test_tombstone(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;

    assert_int_equal(put(c, "a", 5, "1", MS_APPLY_NEWER), 1);
    assert_int_equal(del(c, "a", 7, MS_APPLY_NEWER), 1);
    expect_conn(c, "a", 7, NULL);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 0);

    /* A late, older set must not bring the entry back. */
    assert_int_equal(put(c, "a", 6, "2", MS_APPLY_NEWER), 0);
    assert_int_equal(put(c, "a", 6, "2", MS_APPLY_NOT_OLDER), 0);
    assert_int_equal(del(c, "a", 6, MS_APPLY_NEWER), 0);
    expect_conn(c, "a", 7, NULL);

    assert_int_equal(put(c, "a", 8, "3", MS_APPLY_NEWER), 1);
    expect_conn(c, "a", 8, "3");
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 1);
}


static void test_tombstone_unseen(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;

    assert_int_equal(del(c, "ghost", 3, MS_APPLY_NEWER), 1);
    expect_conn(c, "ghost", 3, NULL);
    assert_int_equal(put(c, "ghost", 2, "1", MS_APPLY_NEWER), 0);
    expect_conn(c, "ghost", 3, NULL);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 0);
}


static void test_get_absent(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    ms_cache_entry_t e;

    memset(&e, 0xff, sizeof(e));
    assert_int_equal(lookup(c, MS_KIND_ROOM, "r", 1, &e), 0);
    assert_int_equal(e.version, 0);
    assert_false(e.present);
    assert_null(e.json);
    assert_int_equal(e.json_len, 0);
    assert_null(e.mp);
    assert_int_equal(e.mp_len, 0);
}


static void test_get_exact_bytes(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    static const char json[] = "{\"name\":\"x\",\"n\":0}";
    static const char mp[] = "\x82\xa4name\xa1x\xa1n\x00\x00\xc0\x00";
    ms_cache_entry_t e;

    assert_int_equal(ms_cache_apply(c, MS_KIND_ROOM, "r1", 2, 9, json,
                                    sizeof(json) - 1, mp, sizeof(mp) - 1,
                                    MS_APPLY_NEWER),
                     1);
    assert_int_equal(lookup(c, MS_KIND_ROOM, "r1", 2, &e), 0);
    assert_true(e.present);
    assert_int_equal(e.version, 9);
    assert_int_equal(e.json_len, sizeof(json) - 1);
    assert_memory_equal(e.json, json, sizeof(json) - 1);
    assert_int_equal(e.json[e.json_len], '\0');
    assert_int_equal(e.mp_len, sizeof(mp) - 1);
    assert_memory_equal(e.mp, mp, sizeof(mp) - 1);
}


static void test_get_keys(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    ms_cache_entry_t e;

    /* Ids are bytes with a length: "a" and "a\0b" are different. */
    assert_int_equal(ms_cache_apply(c, MS_KIND_CONN, "a\0b", 3, 1, "1", 1,
                                    "\x01", 1, MS_APPLY_NEWER),
                     1);
    assert_int_equal(ms_cache_apply(c, MS_KIND_CONN, "a", 1, 2, "2", 1, "\x02",
                                    1, MS_APPLY_NEWER),
                     1);
    assert_int_equal(ms_cache_apply(c, MS_KIND_ROOM, "a", 1, 3, "3", 1, "\x03",
                                    1, MS_APPLY_NEWER),
                     1);

    assert_int_equal(lookup(c, MS_KIND_CONN, "a\0b", 3, &e), 0);
    assert_int_equal(e.version, 1);
    assert_memory_equal(e.mp, "\x01", 1);
    assert_int_equal(lookup(c, MS_KIND_CONN, "a", 1, &e), 0);
    assert_int_equal(e.version, 2);
    assert_int_equal(lookup(c, MS_KIND_ROOM, "a", 1, &e), 0);
    assert_int_equal(e.version, 3);
    assert_memory_equal(e.json, "3", 1);
}


static void test_get_sizes(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    size_t big_len = 200000;
    char *big = malloc(big_len);
    ms_cache_entry_t e;

    /* Present but empty: pointers non-NULL, lengths 0. */
    assert_int_equal(ms_cache_apply(c, MS_KIND_CONN, "empty", 5, 1, "", 0, "",
                                    0, MS_APPLY_NEWER),
                     1);
    assert_int_equal(lookup(c, MS_KIND_CONN, "empty", 5, &e), 0);
    assert_true(e.present);
    assert_non_null(e.json);
    assert_int_equal(e.json_len, 0);
    assert_non_null(e.mp);
    assert_int_equal(e.mp_len, 0);

    /* A large value, then a small one, through the same buffer. */
    assert_non_null(big);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)('a' + i % 26);
    assert_int_equal(ms_cache_apply(c, MS_KIND_CONN, "big", 3, 2, big, big_len,
                                    big, big_len, MS_APPLY_NEWER),
                     1);
    assert_int_equal(lookup(c, MS_KIND_CONN, "big", 3, &e), 0);
    assert_int_equal(e.json_len, big_len);
    assert_memory_equal(e.json, big, big_len);
    assert_memory_equal(e.mp, big, big_len);
    free(big);
    assert_int_equal(put(c, "small", 3, "[1]", MS_APPLY_NEWER), 1);
    expect_conn(c, "small", 3, "[1]");
}


/*
 * Before the resync: a1 b2 c3 g0, d deleted at 4, f12 (newer than the
 * resync's sequence 9), h deleted at 13. During it: the load writes a at
 * the same version and c, events change c to 11 and create e at 10. Only
 * b and g are untouched live entries no newer than 9; d's old tombstone
 * is raised to 9 (it may have come back and gone again unseen), h's
 * stays.
 */
static void test_resync(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;

    assert_int_equal(put(c, "a", 1, "\"a\"", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "b", 2, "\"b\"", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "c", 3, "\"c\"", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "d", 1, "\"d\"", MS_APPLY_NEWER), 1);
    assert_int_equal(del(c, "d", 4, MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "f", 12, "\"f\"", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "g", 0, "\"g\"", MS_APPLY_ALWAYS), 1);
    assert_int_equal(del(c, "h", 13, MS_APPLY_NEWER), 1);

    assert_int_equal(ms_cache_resync_begin(c), 0);
    assert_int_equal(put(c, "a", 1, "\"a\"", MS_APPLY_ALWAYS), 1);
    assert_int_equal(put(c, "c", 3, "\"c\"", MS_APPLY_NOT_OLDER), 1);
    assert_int_equal(put(c, "c", 11, "\"c2\"", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "e", 10, "\"e\"", MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_resync_end(c, 9), 2);

    expect_conn(c, "a", 1, "\"a\"");
    expect_conn(c, "b", 9, NULL);
    expect_conn(c, "c", 11, "\"c2\"");
    expect_conn(c, "d", 9, NULL);
    expect_conn(c, "e", 10, "\"e\"");
    expect_conn(c, "f", 12, "\"f\"");
    expect_conn(c, "g", 9, NULL);
    expect_conn(c, "h", 13, NULL);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 4);

    /* The tombstone's version is the resync's sequence. */
    assert_int_equal(put(c, "b", 8, "\"old\"", MS_APPLY_NEWER), 0);
    assert_int_equal(put(c, "b", 10, "\"b2\"", MS_APPLY_NEWER), 1);
    expect_conn(c, "b", 10, "\"b2\"");

    /* A resync that loads nothing empties the cache. */
    assert_int_equal(ms_cache_resync_begin(c), 0);
    assert_int_equal(ms_cache_resync_end(c, 20), 5);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 0);
    expect_conn(c, "f", 20, NULL);
}


static void test_resync_kinds(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;

    assert_int_equal(ms_cache_apply(c, MS_KIND_ROOM, "r", 1, 1, "1", 1, "1", 1,
                                    MS_APPLY_NEWER),
                     1);
    assert_int_equal(put(c, "a", 2, "2", MS_APPLY_NEWER), 1);

    assert_int_equal(ms_cache_resync_begin(c), 0);
    assert_int_equal(put(c, "a", 2, "2", MS_APPLY_NOT_OLDER), 1);
    assert_int_equal(ms_cache_resync_end(c, 5), 1);
    assert_int_equal(ms_cache_count(c, MS_KIND_ROOM), 0);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 1);
}


/* A generation that restarted from 0 would see "a" as touched. */
static void test_resync_generation_persists(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    uint64_t gen = 0;
    char path[128];

    dir_path(f, "cache.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_int_equal(ms_cache_resync_begin(f->c), 0);
    assert_int_equal(put(f->c, "a", 1, "1", MS_APPLY_NOT_OLDER), 1);
    assert_int_equal(ms_cache_resync_end(f->c, 1), 0);
    ms_cache_close(f->c);

    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_int_equal(ms_cache_meta_get(f->c, "resync_generation", &gen), 0);
    assert_int_equal(gen, 1);
    assert_int_equal(ms_cache_resync_begin(f->c), 0);
    assert_int_equal(ms_cache_resync_end(f->c, 5), 1);
    expect_conn(f->c, "a", 5, NULL);
}


static void test_count(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;

    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 0);
    assert_int_equal(ms_cache_count(c, MS_KIND_ROOM), 0);
    assert_int_equal(put(c, "a", 1, "1", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "b", 2, "1", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "c", 3, "1", MS_APPLY_NEWER), 1);
    assert_int_equal(del(c, "b", 4, MS_APPLY_NEWER), 1);
    for (int i = 0; i < 2; i++) {
        char id[8];

        snprintf(id, sizeof(id), "r%d", i);
        assert_int_equal(ms_cache_apply(c, MS_KIND_ROOM, id, strlen(id), 10,
                                        "1", 1, "1", 1, MS_APPLY_NEWER),
                         1);
    }

    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 2);
    assert_int_equal(ms_cache_count(c, MS_KIND_ROOM), 2);
    assert_int_equal(ms_cache_count(c, (ms_kind_t)7), MS_EINVAL);
}


/* What ms_cache_list handed over: "id=version:json," for each entry. */
typedef struct {
    char seen[256];
    int stop_after; /* stop when this many were seen; 0: never */
    int n;
} list_seen_t;

static int list_seen_cb(void *arg, const char *id, size_t id_len,
                        const ms_cache_entry_t *e)
{
    list_seen_t *l = arg;
    size_t used = strlen(l->seen);

    assert_true(e->present);
    assert_int_equal(e->json[e->json_len], '\0');
    assert_int_equal(e->mp_len, e->json_len);
    snprintf(l->seen + used, sizeof(l->seen) - used, "%.*s=%llu:%s,",
             (int)id_len, id, (unsigned long long)e->version, e->json);
    l->n++;
    return l->n == l->stop_after;
}


/* Live entries of one kind in byte order, after a cursor, stoppable. */
static void test_list(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    list_seen_t l = {0};

    assert_int_equal(put(c, "b", 1, "1", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "\xc3\xa9", 2, "2", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "a:b", 3, "3", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "a", 4, "4", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "B", 5, "5", MS_APPLY_NEWER), 1);
    assert_int_equal(del(c, "ab", 6, MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_apply(c, MS_KIND_ROOM, "a0", 2, 7, "7", 1, "7", 1,
                                    MS_APPLY_NEWER),
                     1);

    assert_int_equal(ms_cache_list(c, MS_KIND_CONN, NULL, 0, list_seen_cb, &l),
                     0);
    assert_string_equal(l.seen, "B=5:5,a=4:4,a:b=3:3,b=1:1,\xc3\xa9=2:2,");

    /* After a tombstone's id, and after the last id. */
    memset(&l, 0, sizeof(l));
    assert_int_equal(ms_cache_list(c, MS_KIND_CONN, "ab", 2, list_seen_cb, &l),
                     0);
    assert_string_equal(l.seen, "b=1:1,\xc3\xa9=2:2,");
    memset(&l, 0, sizeof(l));
    assert_int_equal(
        ms_cache_list(c, MS_KIND_CONN, "\xc3\xa9", 2, list_seen_cb, &l), 0);
    assert_string_equal(l.seen, "");

    memset(&l, 0, sizeof(l));
    l.stop_after = 2;
    assert_int_equal(ms_cache_list(c, MS_KIND_CONN, "", 0, list_seen_cb, &l),
                     1);
    assert_string_equal(l.seen, "B=5:5,a=4:4,");

    memset(&l, 0, sizeof(l));
    assert_int_equal(ms_cache_list(c, MS_KIND_ROOM, "a", 1, list_seen_cb, &l),
                     0);
    assert_string_equal(l.seen, "a0=7:7,");
    assert_int_equal(ms_cache_list(c, (ms_kind_t)7, NULL, 0, list_seen_cb, &l),
                     MS_EINVAL);
    assert_int_equal(ms_cache_list(c, MS_KIND_CONN, NULL, 3, list_seen_cb, &l),
                     MS_EINVAL);

    /* The statement was reset: a write and a get work as before. */
    assert_int_equal(put(c, "c", 8, "8", MS_APPLY_NEWER), 1);
    expect_conn(c, "c", 8, "8");
}


/* The highest version counts tombstones; clear forgets everything. */
static void test_max_version_and_clear(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    ms_cache_entry_t e;

    assert_int_equal(ms_cache_max_version(c), 0);
    assert_int_equal(put(c, "a", 5, "1", MS_APPLY_NEWER), 1);
    assert_int_equal(del(c, "a", 9, MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "b", 7, "1", MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_max_version(c), 9);

    assert_int_equal(ms_cache_clear(c), 0);
    assert_int_equal(ms_cache_max_version(c), 0);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 0);

    /* The tombstone went too: an older version is taken again. */
    assert_int_equal(put(c, "a", 1, "2", MS_APPLY_NEWER), 1);
    assert_int_equal(lookup(c, MS_KIND_CONN, "a", 1, &e), 0);
    assert_true(e.present);
    assert_int_equal(e.version, 1);
}


static void test_meta(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    uint64_t v = 99;

    assert_int_equal(ms_cache_meta_get(c, "last_seq", &v), MS_EINVAL);
    assert_int_equal(ms_cache_meta_set(c, "last_seq", 42), 0);
    assert_int_equal(ms_cache_meta_get(c, "last_seq", &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(ms_cache_meta_set(c, "last_seq", 7), 0);
    assert_int_equal(ms_cache_meta_get(c, "last_seq", &v), 0);
    assert_int_equal(v, 7);

    assert_int_equal(ms_cache_meta_set(c, "big", INT64_MAX), 0);
    assert_int_equal(ms_cache_meta_get(c, "big", &v), 0);
    assert_int_equal(v, INT64_MAX);
    assert_int_equal(ms_cache_meta_set(c, "big", (uint64_t)INT64_MAX + 1),
                     MS_EINVAL);
    assert_int_equal(ms_cache_meta_get(c, "big", &v), 0);
    assert_int_equal(v, INT64_MAX);

    /* The generation belongs to resync_begin. */
    assert_int_equal(ms_cache_meta_set(c, "resync_generation", 5), MS_EINVAL);
    assert_int_equal(ms_cache_resync_begin(c), 0);
    assert_int_equal(ms_cache_meta_get(c, "resync_generation", &v), 0);
    assert_int_equal(v, 1);
}


static void test_version_limits(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    ms_cache_entry_t e;

    assert_int_equal(put(c, "a", (uint64_t)INT64_MAX + 1, "1", MS_APPLY_NEWER),
                     MS_EINVAL);
    assert_int_equal(put(c, "a", UINT64_MAX, "1", MS_APPLY_NOT_OLDER),
                     MS_EINVAL);
    assert_int_equal(del(c, "a", UINT64_MAX, MS_APPLY_ALWAYS), MS_EINVAL);
    assert_int_equal(lookup(c, MS_KIND_CONN, "a", 1, &e), 0);
    assert_int_equal(e.version, 0);
    assert_false(e.present);

    /* Version 0: a value written without one; present tells it apart. */
    assert_int_equal(put(c, "z", 0, "0", MS_APPLY_NEWER), 1);
    assert_int_equal(put(c, "z", 0, "1", MS_APPLY_NEWER), 0);
    assert_int_equal(lookup(c, MS_KIND_CONN, "z", 1, &e), 0);
    assert_true(e.present);
    assert_int_equal(e.version, 0);

    assert_int_equal(put(c, "a", INT64_MAX, "1", MS_APPLY_NEWER), 1);
    expect_conn(c, "a", INT64_MAX, "1");
    assert_int_equal(ms_cache_resync_end(c, (uint64_t)INT64_MAX + 1),
                     MS_EINVAL);
}


static void test_invalid_arguments(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    ms_cache_entry_t e;

    assert_int_equal(ms_cache_apply(c, MS_KIND_CONN, "a", 1, 1, "1", 1, NULL, 0,
                                    MS_APPLY_NEWER),
                     MS_EINVAL);
    assert_int_equal(ms_cache_apply(c, MS_KIND_CONN, "a", 1, 1, NULL, 0, "1", 1,
                                    MS_APPLY_NEWER),
                     MS_EINVAL);
    assert_int_equal(ms_cache_apply(c, (ms_kind_t)2, "a", 1, 1, "1", 1, "1", 1,
                                    MS_APPLY_NEWER),
                     MS_EINVAL);
    assert_int_equal(ms_cache_apply(c, MS_KIND_CONN, "a", 1, 1, "1", 1, "1", 1,
                                    (ms_apply_mode_t)9),
                     MS_EINVAL);
    assert_int_equal(ms_cache_get(c, (ms_kind_t)2, "a", 1, &e), MS_EINVAL);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 0);
}


/* Rows another connection sees in the file: what is committed. */
/* Counts the file's entries rows matching a WHERE clause (committed). */
static int file_rows_where(const char *path, const char *where)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    char sql[256];
    int n;

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM entries WHERE %s", where);
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    n = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}


static int committed_rows(const char *path)
{
    return file_rows_where(path, "1");
}


/*
 * Writes are grouped: memory has them at once, the file once flushed,
 * never in the middle of a begin/commit group (which nests), and at the
 * latest when a transaction reaches 8192 rows.
 */
static void test_transaction(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    char path[128], id[16];
    ms_cache_t *c;

    dir_path(f, "txn.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    c = f->c;
    assert_false(ms_cache_unflushed(c));

    assert_int_equal(ms_cache_begin(c), 0);
    assert_int_equal(put(c, "a", 1, "1", MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_begin(c), 0);
    assert_int_equal(put(c, "b", 2, "2", MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_commit(c), 0);
    assert_int_equal(ms_cache_flush(c), 0); /* inside the outer group */
    assert_true(ms_cache_unflushed(c));
    assert_int_equal(committed_rows(path), 0);
    expect_conn(c, "a", 1, "1");

    assert_int_equal(ms_cache_commit(c), 0);
    assert_int_equal(committed_rows(path), 0);
    assert_int_equal(ms_cache_flush(c), 0);
    assert_false(ms_cache_unflushed(c));
    assert_int_equal(committed_rows(path), 2);

    /* A write on its own opens a transaction too. */
    assert_int_equal(put(c, "c", 3, "3", MS_APPLY_NEWER), 1);
    assert_true(ms_cache_unflushed(c));
    assert_int_equal(committed_rows(path), 2);
    assert_int_equal(ms_cache_flush(c), 0);
    assert_int_equal(committed_rows(path), 3);

    /* A group that reaches 8192 rows commits when it ends. */
    assert_int_equal(ms_cache_begin(c), 0);
    for (int i = 0; i < 8192; i++) {
        snprintf(id, sizeof(id), "n%d", i);
        assert_int_equal(put(c, id, 10 + (uint64_t)i, "0", MS_APPLY_NEWER), 1);
    }
    assert_true(ms_cache_unflushed(c));
    assert_int_equal(ms_cache_commit(c), 0);
    assert_false(ms_cache_unflushed(c));
    assert_int_equal(committed_rows(path), 3 + 8192);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 3 + 8192);
}


static void test_bulk(void **state)
{
    fixture_t *f = *state;
    enum { N = 100000 };
    char id[16], json[32], path[128];
    ms_error_t err = {0};
    ms_cache_t *c;

    dir_path(f, "bulk.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    c = f->c;
    assert_int_equal(ms_cache_begin(c), 0);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "c%d", i);
        snprintf(json, sizeof(json), "{\"i\":%d}", i);
        assert_int_equal(put(c, id, (uint64_t)i + 1, json, MS_APPLY_NEWER), 1);
    }
    assert_int_equal(ms_cache_commit(c), 0);

    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), N);
    expect_conn(c, "c77777", 77778, "{\"i\":77777}");
}


static void expect_journal_mode(const char *path, const char *mode)
{
    sqlite3 *db;
    sqlite3_stmt *s;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), mode);
    sqlite3_finalize(s);
    sqlite3_close(db);
}


static void test_warm_restart(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    uint64_t v = 0;
    char path[128];

    dir_path(f, "cache.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_int_equal(ms_cache_begin(f->c), 0);
    assert_int_equal(put(f->c, "a", 3, "{\"a\":1}", MS_APPLY_NEWER), 1);
    assert_int_equal(put(f->c, "b", 4, "{\"b\":2}", MS_APPLY_NEWER), 1);
    assert_int_equal(del(f->c, "b", 5, MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_commit(f->c), 0);
    assert_int_equal(put(f->c, "c", 6, "[]", MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_meta_set(f->c, "last_seq", 6), 0);
    ms_cache_close(f->c);
    f->c = NULL;

    expect_journal_mode(path, "wal");
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    expect_conn(f->c, "a", 3, "{\"a\":1}");
    expect_conn(f->c, "b", 5, NULL);
    expect_conn(f->c, "c", 6, "[]");
    assert_int_equal(ms_cache_count(f->c, MS_KIND_CONN), 2);
    assert_int_equal(ms_cache_meta_get(f->c, "last_seq", &v), 0);
    assert_int_equal(v, 6);
}


/* Writes n connections "k<i>" at version i+1, a tombstone every 7th. */
static void put_many(ms_cache_t *c, int n, const char *json)
{
    char id[32];

    assert_int_equal(ms_cache_begin(c), 0);
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "k%d", i);
        if (i % 7 == 6)
            assert_int_equal(del(c, id, (uint64_t)i + 1, MS_APPLY_NEWER), 1);
        else
            assert_int_equal(put(c, id, (uint64_t)i + 1, json, MS_APPLY_NEWER),
                             1);
    }
    assert_int_equal(ms_cache_commit(c), 0);
    assert_int_equal(ms_cache_flush(c), 0);
}


/* Every "k<i>" below n reads the same from memory and from the file. */
static void expect_many(ms_cache_t *c, int n, const char *json)
{
    ms_cache_entry_t e;
    char id[32];

    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "k%d", i);
        assert_int_equal(lookup(c, MS_KIND_CONN, id, strlen(id), &e), 0);
        assert_int_equal(e.version, (uint64_t)i + 1);
        assert_int_equal(e.present, i % 7 != 6);
        if (e.present)
            assert_string_equal(e.json, json);
    }
}


/*
 * A large file opens with part of it in memory; reads answer from the
 * file meanwhile, and changes made before the fill reaches a row win
 * over the fill's older copy.
 */
static void test_index_fill(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    ms_cache_entry_t e;
    char path[128];
    int steps = 0;
    int rc;

    dir_path(f, "fill.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_true(ms_cache_filled(f->c));
    put_many(f->c, 20000, "\"old\"");
    ms_cache_close(f->c);
    f->c = NULL;

    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_false(ms_cache_filled(f->c));
    expect_many(f->c, 20000, "\"old\"");
    /* Every 7th was deleted: 17143 live, counted in the file. */
    assert_int_equal(ms_cache_count(f->c, MS_KIND_CONN), 17143);

    assert_int_equal(put(f->c, "k19999", 30000, "\"new\"", MS_APPLY_NEWER), 1);
    assert_int_equal(del(f->c, "k19998", 30001, MS_APPLY_NEWER), 1);
    assert_int_equal(put(f->c, "k20000", 29999, "\"new\"", MS_APPLY_NEWER), 1);
    while ((rc = ms_cache_fill(f->c, 1000)) == 0)
        assert_true(++steps < 100);
    assert_int_equal(rc, 1);
    assert_true(ms_cache_filled(f->c));
    assert_true(steps >= 10);
    assert_int_equal(ms_cache_count(f->c, MS_KIND_CONN), 17144); /* memory */
    assert_int_equal(ms_cache_max_version(f->c), 30001);
    expect_many(f->c, 19998, "\"old\"");
    expect_conn(f->c, "k19999", 30000, "\"new\"");
    expect_conn(f->c, "k19998", 30001, NULL);

    /* Complete now: an id the file lacks is absent without asking it. */
    assert_int_equal(lookup(f->c, MS_KIND_CONN, "k20001", 6, &e), 0);
    assert_int_equal(e.version, 0);
    assert_false(e.present);
}


/*
 * A transaction that fails to commit (here: the file may not grow) is
 * lost, from memory too, which refills from the file; while the file
 * fails, writes commit one by one and memory takes only what it took.
 */
static void test_failed_commit(void **state)
{
    enum { HUGE = 512 * 1024 };
    fixture_t *f = *state;
    ms_error_t err = {0};
    struct rlimit old, low;
    char big[4096];
    char path[128];
    char id[32];
    char *huge;
    int rc = 0;

    dir_path(f, "failed.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    put_many(f->c, 100, "\"kept\"");

    memset(big, 'x', sizeof(big) - 1);
    big[0] = big[sizeof(big) - 2] = '"';
    big[sizeof(big) - 1] = '\0';
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    low = old;
    low.rlim_cur = 256 * 1024;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &low), 0);

    /* Grouped writes reach memory; the commit fails and takes them out. */
    for (int i = 0; i < 60 && rc >= 0; i++) {
        snprintf(id, sizeof(id), "k%d", i);
        rc = put(f->c, id, 1000 + (uint64_t)i, big, MS_APPLY_NEWER);
    }
    if (rc >= 0)
        rc = ms_cache_flush(f->c);
    assert_true(rc < 0);
    assert_false(ms_cache_unflushed(f->c));
    assert_false(ms_cache_filled(f->c));
    expect_many(f->c, 100, "\"kept\"");

    /* Failing now: a write the file refuses stays out of memory. */
    huge = malloc(HUGE);
    assert_non_null(huge);
    memset(huge, 'y', HUGE - 1);
    huge[0] = huge[HUGE - 2] = '"';
    huge[HUGE - 1] = '\0';
    assert_true(put(f->c, "k99", 5000, huge, MS_APPLY_NEWER) < 0);
    free(huge);
    expect_many(f->c, 100, "\"kept\"");

    /* The next flush reports the loss, once. */
    assert_true(ms_cache_unflushed(f->c));
    assert_int_equal(ms_cache_flush(f->c), MS_EINTERNAL);
    assert_false(ms_cache_unflushed(f->c));
    assert_int_equal(ms_cache_flush(f->c), 0);

    /* Space returns: writes commit on their own until one works. */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    assert_int_equal(put(f->c, "k99", 5001, "\"back\"", MS_APPLY_NEWER), 1);
    assert_false(ms_cache_unflushed(f->c));
    expect_conn(f->c, "k99", 5001, "\"back\"");
    assert_int_equal(put(f->c, "k98", 5002, "\"grouped\"", MS_APPLY_NEWER), 1);
    assert_true(ms_cache_unflushed(f->c));
    assert_int_equal(ms_cache_flush(f->c), 0);
    expect_conn(f->c, "k98", 5002, "\"grouped\"");

    /* What was refilled and what came after is all in the file too. */
    for (int i = 0; i < 100 && (rc = ms_cache_fill(f->c, 16)) == 0; i++)
        ;
    assert_int_equal(rc, 1);
    expect_many(f->c, 98, "\"kept\"");
}


/* As put(), with the value's real msgpack: the cache converts it back. */
static int put_mp(ms_cache_t *c, const char *id, uint64_t version,
                  const char *json, ms_apply_mode_t mode)
{
    ms_error_t err;
    char *mp;
    size_t mp_len;
    int rc;

    assert_int_equal(
        ms_value_json_to_msgpack(json, strlen(json), NULL, &mp, &mp_len, &err),
        0);
    rc = ms_cache_apply(c, MS_KIND_CONN, id, strlen(id), version, json,
                        strlen(json), mp, mp_len, mode);
    free(mp);
    return rc;
}


/* A connection's version and JSON, its msgpack converted back. */
static void expect_mp(ms_cache_t *c, const char *id, uint64_t version,
                      const char *json)
{
    ms_cache_entry_t e;
    ms_error_t err;
    char *back;
    size_t back_len;

    assert_int_equal(lookup(c, MS_KIND_CONN, id, strlen(id), &e), 0);
    assert_int_equal(e.version, version);
    assert_true(e.present);
    assert_string_equal(e.json, json);
    assert_int_equal(
        ms_value_msgpack_to_json(e.mp, e.mp_len, NULL, &back, &back_len, &err),
        0);
    assert_int_equal(back_len, strlen(json));
    assert_memory_equal(back, json, back_len);
    free(back);
}


/* Counts listed entries and checks they come in strictly rising order. */
typedef struct {
    int n;
    char last[32];
    size_t last_len;
} order_t;

static int order_cb(void *arg, const char *id, size_t id_len,
                    const ms_cache_entry_t *e)
{
    order_t *o = arg;
    size_t common = id_len < o->last_len ? id_len : o->last_len;
    int rc = memcmp(o->last, id, common);

    assert_true(e->present);
    assert_true(id_len < sizeof(o->last));
    assert_true(o->n == 0 || rc < 0 || (rc == 0 && o->last_len < id_len));
    memcpy(o->last, id, id_len);
    o->last_len = id_len;
    o->n++;
    return 0;
}


/* Runs the cold load's write-behind to its end, as the daemon does. */
static void persist_all(ms_cache_t *c)
{
    ms_cache_persist_t *p;
    int rounds = 0;

    while ((p = ms_cache_persist_new(c)) != NULL) {
        int rc;

        assert_true(++rounds < 10);
        ms_cache_persist_sort(p);
        for (int i = 0; i < 1000 && (rc = ms_cache_persist_step(c, p, 64)) == 0;
             i++)
            ;
        assert_int_equal(rc, 1);
        ms_cache_persist_free(p);
        assert_int_equal(ms_cache_flush(c), 0);
    }
    assert_false(ms_cache_ahead(c));
}


/*
 * A full load into an empty file goes to memory; the file gets the rows
 * afterwards, in key order, without overwriting what changed meanwhile.
 */
static void test_cold_load(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    ms_cache_entry_t e;
    char path[128], id[32], json[64];
    ms_cache_t *c;

    dir_path(f, "cold.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    c = f->c;
    assert_int_equal(ms_cache_resync_begin(c), 0);
    for (int i = 0; i < 3000; i++) {
        snprintf(id, sizeof(id), "k%d", (i * 7919) % 3000);
        snprintf(json, sizeof(json), "{\"n\":%d,\"s\":\"%s\"}", i, id);
        assert_int_equal(put_mp(c, id, 10, json, MS_APPLY_ALWAYS), 1);
    }
    assert_true(ms_cache_ahead(c));
    assert_false(ms_cache_persist_wanted(c)); /* the load is not over */
    assert_null(ms_cache_persist_new(c));
    assert_int_equal(ms_cache_flush(c), 0);
    assert_int_equal(committed_rows(path), 0);
    assert_true(ms_cache_ahead(c));

    /* Served from memory; counted from it; a merge's JSON from it too. */
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 3000);
    assert_int_equal(ms_cache_get(c, MS_KIND_CONN, "k0", 2, &e), 0);
    assert_true(e.present);
    assert_int_equal(ms_cache_get_json(c, MS_KIND_CONN, "k0", 2, &e), 0);
    assert_string_equal(e.json, "{\"n\":0,\"s\":\"k0\"}");

    /* Lists come from memory meanwhile: all of it, in order, by chunks. */
    {
        order_t o = {0};

        assert_int_equal(ms_cache_list(c, MS_KIND_CONN, NULL, 0, order_cb, &o),
                         0);
        assert_int_equal(o.n, 3000);
        o = (order_t){0};
        assert_int_equal(ms_cache_list(c, MS_KIND_CONN, "k5", 2, order_cb, &o),
                         0);
        assert_int_equal(o.n, 5 * 111 - 1); /* k5.., k6.. to k9.., not k5 */
    }

    /* A change meanwhile goes to the file at once, and stays. */
    assert_int_equal(put_mp(c, "k1", 20, "\"new\"", MS_APPLY_NEWER), 1);
    assert_int_equal(put_mp(c, "extra", 21, "\"x\"", MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_resync_end(c, 15), 0);
    assert_int_equal(ms_cache_flush(c), 0);
    assert_int_equal(committed_rows(path), 2);

    persist_all(c);
    assert_int_equal(committed_rows(path), 3001);
    expect_mp(c, "k1", 20, "\"new\"");
    expect_mp(c, "extra", 21, "\"x\"");
    for (int i = 0; i < 3000; i++) {
        snprintf(id, sizeof(id), "k%d", (i * 7919) % 3000);
        snprintf(json, sizeof(json), "{\"n\":%d,\"s\":\"%s\"}", i, id);
        if (strcmp(id, "k1") != 0)
            expect_mp(c, id, 10, json);
    }

    /* And it all reads back the same from the file alone. */
    ms_cache_close(c);
    f->c = NULL;
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_false(ms_cache_ahead(f->c));
    expect_mp(f->c, "k1", 20, "\"new\"");
    assert_int_equal(ms_cache_count(f->c, MS_KIND_CONN), 3001);
}


/*
 * A full load into a file that holds entries goes to memory too: the
 * file is untouched until the load ends, then gets only what changed
 * (new values, new entries, tombstones of entries the load did not see),
 * in key order. Rows the load found as they were are not written again.
 */
static void test_populated_load(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    char path[128], id[32], json[64];
    ms_cache_t *c;

    dir_path(f, "populated.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    c = f->c;
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "k%03d", i);
        snprintf(json, sizeof(json), "{\"n\":%d}", i);
        assert_int_equal(put_mp(c, id, 5, json, MS_APPLY_NEWER), 1);
    }
    assert_int_equal(ms_cache_flush(c), 0);
    assert_int_equal(file_rows_where(path, "gen = 0"), 1000);

    /* k000-k499 as they were, k500-k799 changed, k800-k999 gone, 100 new. */
    assert_int_equal(ms_cache_resync_begin(c), 0);
    assert_true(ms_cache_ahead(c));
    for (int i = 0; i < 1100; i++) {
        if (i >= 800 && i < 1000)
            continue;
        snprintf(id, sizeof(id), "k%03d", i);
        snprintf(json, sizeof(json), "{\"n\":%d}", i < 500 ? i : -i);
        assert_int_equal(put_mp(c, id, i < 500 ? 5 : 8, json, MS_APPLY_ALWAYS),
                         1);
    }
    assert_int_equal(ms_cache_flush(c), 0);
    assert_int_equal(file_rows_where(path, "gen = 0 AND version = 5"), 1000);
    expect_mp(c, "k600", 8, "{\"n\":-600}");

    assert_int_equal(ms_cache_resync_end(c, 9), 200);
    expect_conn(c, "k900", 9, NULL);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 900);
    assert_int_equal(ms_cache_flush(c), 0);
    assert_int_equal(file_rows_where(path, "json IS NULL"), 0);

    persist_all(c);
    assert_int_equal(file_rows_where(path, "gen = 0 AND version = 5"), 500);
    assert_int_equal(file_rows_where(path, "version = 8 AND json LIKE '%-%'"),
                     400);
    assert_int_equal(file_rows_where(path, "version = 9 AND json IS NULL"),
                     200);
    assert_int_equal(committed_rows(path), 1100);

    /* The file alone reads back the same. */
    ms_cache_close(c);
    f->c = NULL;
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    expect_mp(f->c, "k000", 5, "{\"n\":0}");
    expect_mp(f->c, "k799", 8, "{\"n\":-799}");
    expect_mp(f->c, "k1099", 8, "{\"n\":-1099}");
    expect_conn(f->c, "k800", 9, NULL);
    assert_int_equal(ms_cache_count(f->c, MS_KIND_CONN), 900);
}


/* A write-behind transaction lost to a full disk is written again. */
static void test_cold_load_lost(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    struct rlimit old, low;
    ms_cache_persist_t *p;
    char path[128], id[32], big[2048];
    ms_cache_t *c;
    int rc = 0;

    memset(big, 'z', sizeof(big) - 1);
    big[0] = big[sizeof(big) - 2] = '"';
    big[sizeof(big) - 1] = '\0';
    dir_path(f, "lost.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    c = f->c;
    assert_int_equal(ms_cache_resync_begin(c), 0);
    for (int i = 0; i < 400; i++) {
        snprintf(id, sizeof(id), "k%d", i);
        assert_int_equal(put_mp(c, id, 5, big, MS_APPLY_ALWAYS), 1);
    }
    assert_int_equal(ms_cache_resync_end(c, 5), 0);

    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    low = old;
    low.rlim_cur = 256 * 1024;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &low), 0);
    p = ms_cache_persist_new(c);
    assert_non_null(p);
    ms_cache_persist_sort(p);
    for (int i = 0; i < 100 && rc == 0; i++) {
        rc = ms_cache_persist_step(c, p, 50);
        if (rc >= 0)
            rc = ms_cache_flush(c) < 0 ? -1 : rc;
    }
    ms_cache_persist_free(p);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    assert_true(rc < 0);
    assert_true(ms_cache_flush(c) <= 0); /* a loss not yet reported is */

    /* Memory kept everything; the file gets all of it once it can. */
    assert_true(ms_cache_ahead(c));
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 400);
    assert_int_equal(put_mp(c, "probe", 9, "1", MS_APPLY_NEWER), 1);
    persist_all(c);
    assert_int_equal(committed_rows(path), 401);
    expect_mp(c, "k399", 5, big);
}

/* A file last opened in another boot of the machine is not trusted. */
static void test_other_boot(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    uint64_t v = 0;
    char path[128];
    sqlite3 *db;

    dir_path(f, "boot.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    put_many(f->c, 10, "\"x\"");
    assert_int_equal(ms_cache_meta_set(f->c, "applied", 10), 0);
    ms_cache_close(f->c);
    f->c = NULL;

    /* The same boot: as it was. */
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_int_equal(ms_cache_count(f->c, MS_KIND_CONN), 9);
    ms_cache_close(f->c);
    f->c = NULL;

    /* Another boot: emptied, position and all. */
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE meta SET value = value + 1 "
                                  "WHERE key = 'boot'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_close(db);
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_int_equal(ms_cache_count(f->c, MS_KIND_CONN), 0);
    assert_int_equal(ms_cache_meta_get(f->c, "applied", &v), MS_EINVAL);
    assert_int_equal(committed_rows(path), 0);
}

/* A change applied "soon": memory at once, the file at the next flush. */
static void test_apply_soon(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    ms_cache_entry_t e;
    char path[128];
    char *mp;
    size_t mp_len;
    ms_cache_t *c;

    dir_path(f, "soon.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    c = f->c;
    assert_int_equal(
        ms_value_json_to_msgpack("{\"a\":1}", 7, NULL, &mp, &mp_len, &err), 0);
    assert_int_equal(ms_cache_apply_soon(c, MS_KIND_CONN, "s", 1, 5,
                                         "{\"a\":1}", 7, mp, mp_len),
                     1);
    assert_true(ms_cache_unflushed(c));
    assert_int_equal(committed_rows(path), 0);
    assert_int_equal(ms_cache_get(c, MS_KIND_CONN, "s", 1, &e), 0);
    assert_int_equal(e.version, 5);

    /* Not older than memory; a merge's base text is memory's meanwhile. */
    assert_int_equal(ms_cache_apply_soon(c, MS_KIND_CONN, "s", 1, 4,
                                         "{\"a\":1}", 7, mp, mp_len),
                     0);
    assert_int_equal(ms_cache_get_json(c, MS_KIND_CONN, "s", 1, &e), 0);
    assert_string_equal(e.json, "{\"a\":1}");
    free(mp);

    /* A delete too; then the flush writes the last of them. */
    assert_int_equal(
        ms_cache_apply_soon(c, MS_KIND_CONN, "s", 1, 6, NULL, 0, NULL, 0), 1);
    assert_int_equal(ms_cache_flush(c), 0);
    assert_false(ms_cache_unflushed(c));
    expect_conn(c, "s", 6, NULL);
    assert_int_equal(put(c, "t", 7, "\"x\"", MS_APPLY_NEWER), 1);
    assert_int_equal(ms_cache_flush(c), 0);
    assert_int_equal(committed_rows(path), 2);
}

/*
 * A full load while memory is still ahead of the file (its write-behind
 * not done): what the load does not see is gone, in memory too.
 */
static void test_load_while_ahead(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    char path[128], id[16];
    ms_cache_t *c;

    dir_path(f, "ahead.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    c = f->c;
    assert_int_equal(ms_cache_resync_begin(c), 0);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "k%d", i);
        assert_int_equal(put_mp(c, id, 3, "\"a\"", MS_APPLY_ALWAYS), 1);
    }
    assert_int_equal(ms_cache_resync_end(c, 5), 0);
    assert_true(ms_cache_ahead(c));

    /* The second load sees k0..k4 only. */
    assert_int_equal(ms_cache_resync_begin(c), 0);
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "k%d", i);
        assert_int_equal(put_mp(c, id, 8, "\"b\"", MS_APPLY_ALWAYS), 1);
    }
    assert_int_equal(ms_cache_resync_end(c, 9), 5);
    assert_int_equal(ms_cache_count(c, MS_KIND_CONN), 5);
    persist_all(c);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "k%d", i);
        if (i < 5)
            expect_mp(c, id, 8, "\"b\"");
        else
            expect_conn(c, id, 9, NULL);
    }
}


/*
 * A transaction lost outside the flush (a list writing the turn's
 * changes first) is reported by the next flush, and the flush commits
 * nothing written after it.
 */
static void test_loss_reported(void **state)
{
    enum { HUGE = 2 * 1024 * 1024 };
    fixture_t *f = *state;
    ms_error_t err = {0};
    struct rlimit old, low;
    order_t o = {0};
    char path[128];
    char *huge, *mp;
    size_t mp_len;
    ms_cache_t *c;

    dir_path(f, "loss.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    c = f->c;
    put_many(c, 10, "\"kept\"");
    huge = malloc(HUGE);
    assert_non_null(huge);
    memset(huge, 'y', HUGE - 1);
    huge[0] = huge[HUGE - 2] = '"';
    huge[HUGE - 1] = '\0';
    assert_int_equal(
        ms_value_json_to_msgpack(huge, HUGE - 1, NULL, &mp, &mp_len, &err), 0);

    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    low = old;
    low.rlim_cur = 256 * 1024;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &low), 0);
    assert_int_equal(ms_cache_apply_soon(c, MS_KIND_CONN, "k0", 2, 100, huge,
                                         HUGE - 1, mp, mp_len),
                     1);
    assert_true(ms_cache_list(c, MS_KIND_CONN, NULL, 0, order_cb, &o) < 0);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    free(huge);
    free(mp);

    /* Memory went back to the file; a later write is not committed. */
    assert_int_equal(put(c, "late", 200, "\"x\"", MS_APPLY_NEWER), 1);
    assert_true(ms_cache_unflushed(c));
    assert_int_equal(ms_cache_flush(c), MS_EINTERNAL);
    assert_int_equal(ms_cache_flush(c), 0);
    assert_int_equal(committed_rows(path), 10);
    for (int i = 0; i < 100 && ms_cache_fill(c, 16) == 0; i++)
        ;
    expect_many(c, 10, "\"kept\"");
    expect_conn(c, "late", 0, NULL);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");

    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}


static void test_garbage_file(void **state)
{
    fixture_t *f = *state;
    unsigned char junk[4096], back[sizeof(junk) + 1];
    uint32_t x = 2463534242u;
    ms_error_t err = {0};
    ms_cache_t *c = (ms_cache_t *)&err;
    char path[128];
    FILE *fp;

    for (size_t i = 0; i < sizeof(junk); i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        junk[i] = (unsigned char)x;
    }
    dir_path(f, "garbage.db", path, sizeof(path));
    write_file(path, junk, sizeof(junk));

    /* *out is cleared on failure; MS_EINVAL: not a usable cache file. */
    assert_int_equal(ms_cache_open(path, &c, &err), MS_EINVAL);
    assert_null(c);
    assert_int_equal(err.code, MS_EINVAL);
    assert_non_null(strstr(err.msg, "not a database"));

    /* The file is left as it was. */
    fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fread(back, 1, sizeof(back), fp), sizeof(junk));
    fclose(fp);
    assert_memory_equal(back, junk, sizeof(junk));
}


static void test_foreign_schema_version(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    char path[128];
    sqlite3 *db;

    dir_path(f, "future.db", path, sizeof(path));
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);

    assert_int_equal(ms_cache_open(path, &f->c, &err), MS_EINVAL);
    assert_null(f->c);
    assert_non_null(strstr(err.msg, "schema version 99"));
}


/* One process at a time per cache file; the lock goes with the close. */
static void test_lock(void **state)
{
    fixture_t *f = *state;
    ms_error_t err = {0};
    ms_cache_t *second = NULL;
    char path[128];

    dir_path(f, "locked.db", path, sizeof(path));
    assert_int_equal(ms_cache_open(path, &f->c, &err), 0);
    assert_int_equal(ms_cache_open(path, &second, &err), MS_EINTERNAL);
    assert_null(second);
    assert_non_null(strstr(err.msg, "in use by another meshsyncd"));

    ms_cache_close(f->c);
    f->c = NULL;
    assert_int_equal(ms_cache_open(path, &second, &err), 0);
    ms_cache_close(second);
}


/* Everything that defines a database's schema, as one string. */
static char *schema_dump(const char *path)
{
    const char *q = "SELECT type || ' ' || name || ' ' || tbl_name || ' ' "
                    "|| coalesce(sql, '') FROM sqlite_master ORDER BY name";
    size_t len = 0, cap = 1 << 16;
    char *out = malloc(cap);
    sqlite3_stmt *s;
    sqlite3 *db;

    assert_non_null(out);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &s, NULL), SQLITE_OK);
    while (sqlite3_step(s) == SQLITE_ROW) {
        int n = snprintf(out + len, cap - len, "%s\n",
                         (const char *)sqlite3_column_text(s, 0));

        assert_true(n > 0 && (size_t)n < cap - len);
        len += (size_t)n;
    }
    sqlite3_finalize(s);

    assert_int_equal(
        sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    snprintf(out + len, cap - len, "user_version %d", sqlite3_column_int(s, 0));
    sqlite3_finalize(s);
    sqlite3_close(db);
    return out;
}


/* schema/cache.sql, found from this file's own path. */
static char *read_schema_file(void)
{
    const char *tail = "tests/unit/test_cache.c";
    size_t len = strlen(__FILE__), tail_len = strlen(tail), n;
    char path[512], *text = malloc(1 << 16);
    FILE *fp;

    assert_non_null(text);
    assert_true(len >= tail_len);
    assert_string_equal(__FILE__ + len - tail_len, tail);
    snprintf(path, sizeof(path), "%.*sschema/cache.sql", (int)(len - tail_len),
             __FILE__);

    fp = fopen(path, "rb");
    assert_non_null(fp);
    n = fread(text, 1, (1 << 16) - 1, fp);
    assert_true(feof(fp));
    fclose(fp);
    text[n] = '\0';
    return text;
}


static void test_schema_file_matches(void **state)
{
    fixture_t *f = *state;
    char a[128], b[128], *sql = read_schema_file(), *dump_a, *dump_b;
    ms_error_t err = {0};
    sqlite3 *db;

    dir_path(f, "code.db", a, sizeof(a));
    assert_int_equal(ms_cache_open(a, &f->c, &err), 0);
    ms_cache_close(f->c);
    f->c = NULL;

    dir_path(f, "file.db", b, sizeof(b));
    assert_int_equal(sqlite3_open(b, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    dump_a = schema_dump(a);
    dump_b = schema_dump(b);
    assert_non_null(strstr(dump_a, "table entries"));
    assert_non_null(strstr(dump_a, "table members"));
    assert_non_null(strstr(dump_a, "user_version 2"));
    assert_string_equal(dump_a, dump_b);
    free(dump_a);
    free(dump_b);
    free(sql);
}


/* Collects the members ms_cache_members() walks: "id=json;..." */
static int collect_member(void *arg, const char *id, size_t id_len,
                          const ms_cache_entry_t *e)
{
    char *out = arg;
    size_t n = strlen(out);

    snprintf(out + n, 256 - n, "%.*s=%s;", (int)id_len, id,
             e->present ? e->json : "nil");
    return 0;
}


static void expect_members(ms_cache_t *c, const char *room, const char *want)
{
    char got[256] = "";

    assert_int_equal(
        ms_cache_members(c, room, strlen(room), NULL, 0, collect_member, got),
        0);
    assert_string_equal(got, want);
}


static int member(ms_cache_t *c, const char *room, const char *conn,
                  uint64_t version, bool present)
{
    return ms_cache_member_apply(c, room, strlen(room), conn, strlen(conn),
                                 version, present);
}


/*
 * Joins and leaves under the version guard, a close that takes a
 * connection out of every room, a resync that ends the memberships it
 * did not see, and each member's metadata alongside.
 */
static void test_members(void **state)
{
    ms_cache_t *c = ((fixture_t *)*state)->c;
    char got[256] = "";

    assert_int_equal(put(c, "a", 1, "{\"n\":1}", MS_APPLY_NEWER), 1);
    assert_int_equal(member(c, "r", "a", 2, true), 1);
    assert_int_equal(member(c, "r", "b", 3, true), 1);
    assert_int_equal(member(c, "s", "a", 4, true), 1);
    expect_members(c, "r", "a={\"n\":1};b=nil;");

    /* A late, older join does not undo a leave. */
    assert_int_equal(member(c, "r", "b", 6, false), 1);
    assert_int_equal(member(c, "r", "b", 5, true), 0);
    expect_members(c, "r", "a={\"n\":1};");

    /* After "a", in byte order. */
    assert_int_equal(member(c, "r", "c", 7, true), 1);
    assert_int_equal(ms_cache_members(c, "r", 1, "a", 1, collect_member, got),
                     0);
    assert_string_equal(got, "c=nil;");

    /* a closes at 8: out of r and s; a join older than that is late. */
    assert_int_equal(ms_cache_member_drop_conn(c, "a", 1, 8), 0);
    expect_members(c, "r", "c=nil;");
    expect_members(c, "s", "");
    assert_int_equal(member(c, "s", "a", 7, true), 0);

    /* A resync at 20 that saw only d in r. */
    assert_int_equal(ms_cache_resync_begin(c), 0);
    assert_int_equal(ms_cache_member_load(c, "r", 1, "d", 1, 20), 1);
    assert_int_equal(ms_cache_resync_end(c, 20), 1);
    expect_members(c, "r", "d=nil;");

    /* A load does not undo a change newer than its sequence. */
    assert_int_equal(member(c, "r", "e", 25, false), 1);
    assert_int_equal(ms_cache_member_load(c, "r", 1, "e", 1, 20), 0);
    assert_int_equal(member(c, "r", "c", 19, true), 0);

    /* Redis lost its data: memberships go too. */
    assert_int_equal(ms_cache_clear(c), 0);
    expect_members(c, "r", "");
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_apply_newer, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_apply_not_older, setup_mem,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_apply_always, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_tombstone, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_tombstone_unseen, setup_mem,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_get_absent, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_get_exact_bytes, setup_mem,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_get_keys, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_get_sizes, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_resync, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_resync_kinds, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_resync_generation_persists,
                                        setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_count, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_list, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_meta, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_version_limits, setup_mem,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_invalid_arguments, setup_mem,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_transaction, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_bulk, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_warm_restart, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_max_version_and_clear, setup_mem,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_garbage_file, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_schema_version, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lock, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_schema_file_matches, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_members, setup_mem, teardown),
        cmocka_unit_test_setup_teardown(test_index_fill, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_failed_commit, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cold_load, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_populated_load, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_other_boot, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_apply_soon, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_load_while_ahead, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_loss_reported, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cold_load_lost, setup_dir,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
