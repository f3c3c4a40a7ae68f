/*
 * bench_req.c - ids, values and pre-encoded requests (see bench_req.h).
 * Entry points: bench_reqs_init(), bench_value_json(), bench_reqs_get(),
 * bench_reqs_set(), bench_reqs_hget(), bench_reqs_evalsha(),
 * bench_reqs_publish(). Bench process, single-threaded; never called
 * inside a timed region.
 */
#include "bench_req.h"

#include <hiredis/hiredis.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Mesh's keys under the default prefix "mesh" (schema/REDIS.md). */
#define KEY_CONN_META     "mesh:connection-meta"
#define KEY_ROOM_PREFIX   "mesh:roommeta:"
#define KEY_VERSIONS_CONN "mesh:meshsync:versions:conn"
#define KEY_VERSIONS_ROOM "mesh:meshsync:versions:room"
#define KEY_SEQ           "mesh:meshsync:seq"
#define KEY_TURN_PREFIX   "mesh:meshsync:turn:"
#define KEY_LOG           "mesh:meshsync:log"
#define KEY_PREFIX        "mesh:"
#define CHANNEL_DB0       "mesh:meshsync:changes:0"

/* The daemon's defaults: a turn's length and the change log's. */
#define TURN_MS    "100"
#define LOG_LENGTH "10000"

#define VALUE_MAX 65536

int bench_reqs_init(bench_reqs_t *r, size_t max)
{
    *r = (bench_reqs_t){0};
    r->off = calloc(max + 1, sizeof(*r->off));
    if (r->off == NULL)
        return MS_ENOMEM;
    r->max = max;
    return 0;
}


void bench_reqs_free(bench_reqs_t *r)
{
    free(r->buf);
    free(r->off);
    *r = (bench_reqs_t){0};
}


/* Appends one request's bytes, with a frame header when framed. */
static int reqs_push(bench_reqs_t *r, const char *p, size_t n, bool framed)
{
    size_t need = r->len + n + (framed ? 4 : 0);
    char *q;

    if (r->n >= r->max)
        return MS_ETOOLARGE;
    if (need > r->cap) {
        size_t cap = r->cap ? r->cap : 64 * 1024;

        while (cap < need)
            cap *= 2;
        q = realloc(r->buf, cap);
        if (q == NULL)
            return MS_ENOMEM;
        r->buf = q;
        r->cap = cap;
    }
    if (framed) {
        unsigned char h[4] = {(unsigned char)(n >> 24),
                              (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                              (unsigned char)n};

        memcpy(r->buf + r->len, h, 4);
        r->len += 4;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    r->off[++r->n] = r->len;
    return 0;
}


void bench_req_id(bench_kind_t kind, size_t i, char *out, size_t size)
{
    snprintf(out, size, "%c%06zu", kind == BENCH_CONN ? 'c' : 'r', i);
}


/*
 * Every value has one shape: {K1: S1, K2: S2, K3: {N1: NS, N2: NI, v: v},
 * pad: "..."}, the pad making up the size. Connections look like Mesh's
 * examples (userId, role, session), rooms too (topic, owner, settings).
 */
typedef struct value_s {
    const char *k1, *k2, *k3, *n1, *n2;
    char s1[24], s2[24], ns[24];
    unsigned long long ni;
    unsigned v;
    size_t pad;
    char pad_char;
} value_t;

static const char *const roles[] = {"member", "admin", "guest", "moderator"};

static void value_fields(bench_kind_t kind, size_t i, unsigned v, value_t *f)
{
    bool conn = kind == BENCH_CONN;

    f->k1 = conn ? "userId" : "topic";
    f->k2 = conn ? "role" : "owner";
    f->k3 = conn ? "session" : "settings";
    f->n1 = conn ? "id" : "name";
    f->n2 = conn ? "started" : "maxUsers";
    snprintf(f->s1, sizeof(f->s1), "%s%06zu", conn ? "u" : "topic ", i);
    if (conn)
        snprintf(f->s2, sizeof(f->s2), "%s", roles[(i + v) % 4]);
    else
        snprintf(f->s2, sizeof(f->s2), "u%06zu", (i * 7 + v) % 1000000);
    snprintf(f->ns, sizeof(f->ns), "s%08zx", i * 2654435761u % 0xffffffffu);
    f->ni = conn ? 1700000000ull + i : 100ull + i % 900;
    f->v = v;
    f->pad_char = (char)('a' + v % 26);
}


size_t bench_value_json(bench_kind_t kind, size_t i, unsigned v, size_t bytes,
                        char *out, size_t size)
{
    value_t f;
    int n;

    value_fields(kind, i, v, &f);
    n = snprintf(out, size,
                 "{\"%s\":\"%s\",\"%s\":\"%s\",\"%s\":{\"%s\":\"%s\","
                 "\"%s\":%llu,\"v\":%u},\"pad\":\"",
                 f.k1, f.s1, f.k2, f.s2, f.k3, f.n1, f.ns, f.n2, f.ni, f.v);
    if (n < 0 || (size_t)n + 3 > size)
        return 0;
    f.pad = bytes > (size_t)n + 2 ? bytes - (size_t)n - 2 : 0;
    if ((size_t)n + f.pad + 3 > size)
        return 0;
    memset(out + n, f.pad_char, f.pad);
    memcpy(out + n + f.pad, "\"}", 3);
    return (size_t)n + f.pad + 2;
}


static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}


static void pack_cstr(msgpack_packer *pk, const char *s)
{
    pack_str(pk, s, strlen(s));
}


/* The value of bench_value_json(), as msgpack. */
static int pack_value(msgpack_packer *pk, size_t i, unsigned v, size_t bytes)
{
    char json[VALUE_MAX];
    size_t n = bench_value_json(BENCH_CONN, i, v, bytes, json, sizeof(json));
    const char *pad;
    value_t f;

    if (n == 0)
        return MS_ETOOLARGE;
    value_fields(BENCH_CONN, i, v, &f);
    pad = strstr(json, "\"pad\":\"") + 7;
    msgpack_pack_map(pk, 4);
    pack_cstr(pk, f.k1);
    pack_cstr(pk, f.s1);
    pack_cstr(pk, f.k2);
    pack_cstr(pk, f.s2);
    pack_cstr(pk, f.k3);
    msgpack_pack_map(pk, 3);
    pack_cstr(pk, f.n1);
    pack_cstr(pk, f.ns);
    pack_cstr(pk, f.n2);
    msgpack_pack_uint64(pk, f.ni);
    pack_cstr(pk, "v");
    msgpack_pack_uint32(pk, f.v);
    pack_cstr(pk, "pad");
    pack_str(pk, pad, (size_t)(json + n - 2 - pad));
    return 0;
}


/* --- frames ----------------------------------------------------------- */

typedef struct frame_s {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} frame_t;

static void frame_begin(frame_t *f, uint64_t rid, const char *op, size_t more)
{
    msgpack_sbuffer_init(&f->sb);
    msgpack_packer_init(&f->pk, &f->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&f->pk, 2 + more);
    pack_cstr(&f->pk, "id");
    msgpack_pack_uint64(&f->pk, rid);
    pack_cstr(&f->pk, "op");
    pack_cstr(&f->pk, op);
}


static int frame_end(frame_t *f, bench_reqs_t *r)
{
    int rc = f->sb.data != NULL ? reqs_push(r, f->sb.data, f->sb.size, true)
                                : MS_ENOMEM;

    msgpack_sbuffer_destroy(&f->sb);
    return rc;
}


int bench_reqs_get(bench_reqs_t *r, bench_kind_t kind, const char *id,
                   uint64_t rid)
{
    frame_t f;

    frame_begin(&f, rid, kind == BENCH_CONN ? "conn.get" : "room.get", 1);
    pack_cstr(&f.pk, kind == BENCH_CONN ? "conn" : "room");
    pack_cstr(&f.pk, id);
    return frame_end(&f, r);
}


int bench_reqs_set(bench_reqs_t *r, size_t i, unsigned v, size_t bytes,
                   const char *strategy, uint64_t rid)
{
    char id[32];
    frame_t f;
    int rc;

    bench_req_id(BENCH_CONN, i, id, sizeof(id));
    frame_begin(&f, rid, "conn.set", 3);
    pack_cstr(&f.pk, "conn");
    pack_cstr(&f.pk, id);
    pack_cstr(&f.pk, "value");
    rc = pack_value(&f.pk, i, v, bytes);
    pack_cstr(&f.pk, "strategy");
    pack_cstr(&f.pk, strategy);
    if (rc < 0) {
        msgpack_sbuffer_destroy(&f.sb);
        return rc;
    }
    return frame_end(&f, r);
}


int bench_reqs_watch_all(bench_reqs_t *r, uint64_t rid)
{
    frame_t f;

    frame_begin(&f, rid, "watch", 1);
    pack_cstr(&f.pk, "all");
    msgpack_pack_true(&f.pk);
    return frame_end(&f, r);
}


/* --- RESP ------------------------------------------------------------- */

static int resp_push(bench_reqs_t *r, int argc, const char **argv,
                     const size_t *argvlen)
{
    char *cmd = NULL;
    int n = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    int rc;

    if (n < 0)
        return MS_ENOMEM;
    rc = reqs_push(r, cmd, (size_t)n, false);
    redisFreeCommand(cmd);
    return rc;
}


int bench_reqs_hget(bench_reqs_t *r, bench_kind_t kind, const char *id)
{
    char key[64];
    const char *argv[3] = {"HGET", key, kind == BENCH_CONN ? id : "data"};

    if (kind == BENCH_CONN)
        snprintf(key, sizeof(key), "%s", KEY_CONN_META);
    else
        snprintf(key, sizeof(key), "%s%s", KEY_ROOM_PREFIX, id);
    return resp_push(r, 3, argv, NULL);
}


int bench_req_evalsha_cmd(const bench_script_t *s, bench_kind_t kind, size_t i,
                          unsigned v, size_t bytes, char **cmd, size_t *len)
{
    bool room = kind == BENCH_ROOM;
    char id[32], hash[64], turn[64], json[VALUE_MAX];
    size_t json_len = bench_value_json(kind, i, v, bytes, json, sizeof(json));
    size_t argvlen[21];
    int n;

    if (json_len == 0)
        return MS_ETOOLARGE;
    bench_req_id(kind, i, id, sizeof(id));
    snprintf(hash, sizeof(hash), "%s%s", room ? KEY_ROOM_PREFIX : KEY_CONN_META,
             room ? id : "");
    snprintf(turn, sizeof(turn), "%s%s:%s", KEY_TURN_PREFIX,
             room ? "room" : "conn", id);

    /* As sidecar/writes.c sends it: 5 KEYS, then 13 ARGV. */
    const char *args[21] = {"EVALSHA",
                            s->sha,
                            "5",
                            hash,
                            room ? KEY_VERSIONS_ROOM : KEY_VERSIONS_CONN,
                            KEY_SEQ,
                            turn,
                            KEY_LOG,
                            room ? "data" : id,
                            id,
                            CHANNEL_DB0,
                            room ? "room" : "conn",
                            "any",
                            "",
                            "set",
                            json,
                            s->instance,
                            TURN_MS,
                            LOG_LENGTH,
                            KEY_PREFIX,
                            ""};

    for (int k = 0; k < 21; k++)
        argvlen[k] = k == 15 ? json_len : strlen(args[k]);
    n = redisFormatCommandArgv(cmd, 21, args, argvlen);
    if (n < 0)
        return MS_ENOMEM;
    *len = (size_t)n;
    return 0;
}


int bench_reqs_evalsha(bench_reqs_t *r, const bench_script_t *s,
                       bench_kind_t kind, size_t i, unsigned v, size_t bytes)
{
    char *cmd = NULL;
    size_t len;
    int rc = bench_req_evalsha_cmd(s, kind, i, v, bytes, &cmd, &len);

    if (rc < 0)
        return rc;
    rc = reqs_push(r, cmd, len, false);
    redisFreeCommand(cmd);
    return rc;
}


int bench_reqs_publish(bench_reqs_t *r, const char *channel, uint64_t seq,
                       size_t len)
{
    char payload[VALUE_MAX];
    const char *argv[3] = {"PUBLISH", channel, payload};
    size_t argvlen[3] = {7, strlen(channel), len < 10 ? 10 : len};

    if (argvlen[2] > sizeof(payload))
        return MS_ETOOLARGE;
    memset(payload, 'p', argvlen[2]);
    snprintf(payload, 11, "%010llu", (unsigned long long)seq);
    payload[10] = 'p';
    return resp_push(r, 3, argv, argvlen);
}


int bench_reqs_subscribe(bench_reqs_t *r, const char *channel)
{
    const char *argv[2] = {"SUBSCRIBE", channel};

    return resp_push(r, 2, argv, NULL);
}


uint64_t bench_req_payload_seq(const char *p, size_t len)
{
    uint64_t v = 0;

    for (size_t i = 0; i < 10 && i < len && p[i] >= '0' && p[i] <= '9'; i++)
        v = v * 10 + (uint64_t)(p[i] - '0');
    return v;
}
