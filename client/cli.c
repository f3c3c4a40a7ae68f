/*
 * cli.c - the meshsync command: one command against the sidecar per run
 * (one request, or as many as a list's pages, an mget's batches or a
 * watch's events need).
 *
 * main() parses the command line (options may stand anywhere among the
 * command words), reads a JSON value from an argument or stdin, makes the
 * calls through libmeshsync and prints results as JSON, one per line.
 * Single-threaded. Exit status: 0 success, 1 the request failed, 2 usage
 * error, 3 the sidecar cannot be reached.
 */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meshsync.h"
#include "value.h"

#ifndef MESHSYNC_VERSION
#define MESHSYNC_VERSION "0.1.0"
#endif

enum { EXIT_OK = 0, EXIT_REQUEST = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

/* The sidecar refuses bigger frames, so more input cannot succeed. */
#define INPUT_MAX (1024 * 1024)

/* An mget asks for at most this many ids at once; more take more calls. */
#define MGET_BATCH 1000

typedef struct cli_args_s {
    const char *socket; /* NULL: the library's default */
    int timeout_ms;     /* -1: the library's default */
    int verbose;
    int strong;
    int help;
    int version;
    const char *strategy_arg;
    meshsync_strategy_t strategy;
    const char *min_version_arg; /* NULL: a get answers at once */
    uint64_t min_version;
    int wait_ms;    /* -1: the sidecar's default */
    const char *as; /* hello: the connection conn commands default to */
    size_t limit;   /* list: entries per request; 0: the sidecar's default */
    const char *limit_arg;
    /* watch: --room and --conn (argc slots each, main frees them) */
    const char **rooms;
    size_t nrooms;
    const char **conns;
    size_t nconns;
    int all;
    const char *count_arg;
    uint64_t count; /* watch: stop after this many events; 0: never */
    /* argc + 1 slots (mget takes any number of ids); main frees it */
    const char **words;
    int nwords;
} cli_args_t;

static const char help_text[] =
    "Usage: meshsync [OPTIONS] COMMAND\n"
    "\n"
    "Reads and writes the metadata held by the meshsync sidecar "
    "(meshsyncd).\n"
    "\n"
    "Commands:\n"
    "  ping                check that the sidecar answers; prints pong\n"
    "  health              print the sync state as JSON (state, ready,\n"
    "                      lag, ...); exit 0 only when live: connected\n"
    "                      and caught up (a readiness probe)\n"
    "  room get ROOM       print a room's metadata (null when none)\n"
    "  room set ROOM JSON  set a room's metadata\n"
    "  room delete ROOM    remove a room's metadata\n"
    "  conn get [CONN]     print a connection's metadata (null when none)\n"
    "  conn set [CONN] JSON\n"
    "                      set a connection's metadata\n"
    "  conn close [CONN]   close a connection: its metadata, registration\n"
    "                      and room memberships go\n"
    "                      (CONN may be left out after --as CONN)\n"
    "  conn open [CONN]    register a connection in Mesh's registry as\n"
    "                      owned by the sidecar's instance (with --as,\n"
    "                      bound: closed when this command exits)\n"
    "  room list           print every room's metadata, one line per room:\n"
    "                      {\"id\":ROOM,\"value\":V,\"version\":N}, in id\n"
    "                      (byte) order, fetched a page at a time\n"
    "  conn list           the same for every connection\n"
    "  room mget ROOM...   print the metadata of the rooms named, one line\n"
    "                      per room in the order given, as list does\n"
    "                      (value null when none)\n"
    "  conn mget CONN...   the same for connections\n"
    "  room join ROOM CONN, room leave ROOM CONN\n"
    "                      put a connection in a room, or take it out\n"
    "                      (Mesh's membership sets); prints {\"version\":N}\n"
    "                      (0 when nothing changed)\n"
    "  room members ROOM   print the connections in a room, one line each,\n"
    "                      with their metadata, as list does\n"
    "  watch               print each change to the entries named by\n"
    "                      --room, --conn or --all as it happens, one line\n"
    "                      per change, in version order:\n"
    "                      {\"kind\":K,\"id\":ID,\"value\":V,\"version\":N}\n"
    "                      (K \"room\" or \"conn\", V null when deleted),\n"
    "                      or {\"reset\":true,\"version\":N} when changes\n"
    "                      up to N may have been missed (read again what\n"
    "                      you need); runs until killed, or for --count N\n"
    "                      events; exit 3 if the sidecar goes away\n"
    "\n"
    "JSON is one JSON value (quote it for the shell), or - to read it\n"
    "from standard input. A get prints the value as JSON on one line; a\n"
    "set, delete or close prints {\"version\":N}, the entry's new version.\n"
    "\n"
    "Options, before or after the command words:\n"
    "  --socket PATH    the sidecar's Unix socket\n"
    "  --timeout MS     wait at most MS milliseconds for the sidecar\n"
    "                   (default 5000; 0 waits forever)\n"
    "  --strategy NAME  for set: replace (default), merge or deepMerge\n"
    "  --as CONN        bind this session to connection CONN first\n"
    "                   (hello); conn commands may then leave CONN out,\n"
    "                   as an app reads its own metadata\n"
    "  --min-version N  for get: first wait until the sidecar holds at\n"
    "                   least version N of the entry (the version a set\n"
    "                   printed, also one made through another sidecar)\n"
    "  --wait-ms MS     for get with --min-version: wait at most MS\n"
    "                   milliseconds, 0 to 60000 (default 1000); past it\n"
    "                   the sidecar asks Redis, and fails with timeout\n"
    "                   if Redis lacks it too. Added to --timeout.\n"
    "  --strong         for get: read from Redis, not the sidecar's cache\n"
    "  --limit N        for list: entries per request, 1 to 10000 (default\n"
    "                   1000); list still prints every entry\n"
    "  --room ROOM      for watch: watch this room (repeatable)\n"
    "  --conn CONN      for watch: watch this connection (repeatable)\n"
    "  --all            for watch: watch every room and connection\n"
    "  --count N        for watch: exit 0 after N events\n"
    "  -v, --verbose    for get: print "
    "{\"value\":V,\"version\":N,\"stale\":B}\n"
    "                   (and \"behind\":N, in versions, when stale and\n"
    "                   known); for list and mget: add \"stale\":B to\n"
    "                   each line\n"
    "  -h, --help       print this help and exit\n"
    "  --version        print the version and exit\n"
    "  --               end of options\n"
    "An argument such as -5 (a dash and a digit) is a value, not an "
    "option.\n"
    "\n"
    "Environment:\n"
    "  MESHSYNC_SOCKET  the socket when --socket is not given; if unset,\n"
    "                   " MESHSYNC_DEFAULT_SOCKET "\n"
    "\n"
    "Errors go to standard error as \"meshsync: CODE: MESSAGE\".\n"
    "Exit status:\n"
    "  0  success\n"
    "  1  the request failed: the sidecar answered with an error (a get\n"
    "     whose --min-version did not arrive in time: timeout), or the\n"
    "     value is not valid JSON\n"
    "  2  usage error\n"
    "  3  the sidecar cannot be reached (no socket, connection refused or\n"
    "     closed, no answer in time)\n";

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("meshsync: usage: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'meshsync --help' for more information.\n", stderr);
    return -1;
}

static int parse_timeout(const char *s, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno != 0 ||
        v > INT_MAX)
        return usage_error("bad --timeout '%s': want milliseconds", s);
    *out = (int)v;
    return 0;
}

static int parse_wait(const char *s, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno != 0 ||
        v > 60000)
        return usage_error("bad --wait-ms '%s': want 0 to 60000 "
                           "milliseconds",
                           s);
    *out = (int)v;
    return 0;
}

static int parse_min_version(const char *s, cli_args_t *a)
{
    unsigned long long v;
    char *end;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno != 0)
        return usage_error("bad --min-version '%s': want a version number", s);
    a->min_version_arg = s;
    a->min_version = (uint64_t)v;
    return 0;
}

static int parse_count(const char *s, cli_args_t *a)
{
    unsigned long long v;
    char *end;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno != 0 || v == 0)
        return usage_error("bad --count '%s': want a number of events", s);
    a->count_arg = s;
    a->count = (uint64_t)v;
    return 0;
}

/* Adds a --room or --conn id to its list (argc slots, made on first use). */
static int add_watch_id(const char ***list, size_t *n, int argc, const char *id)
{
    if (*list == NULL)
        *list = calloc((size_t)argc, sizeof(**list));
    if (*list == NULL) {
        fputs("meshsync: internal: out of memory\n", stderr);
        return -1;
    }
    (*list)[(*n)++] = id;
    return 0;
}

/* The sidecar judges the upper bound (10000); 0 would mean its default. */
static int parse_limit(const char *s, cli_args_t *a)
{
    unsigned long long v;
    char *end;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno != 0 || v == 0 ||
        v > SIZE_MAX)
        return usage_error("bad --limit '%s': want a number of entries", s);
    a->limit_arg = s;
    a->limit = (size_t)v;
    return 0;
}

/*
 * Takes the value of an option given as "--name VALUE" or "--name=VALUE".
 * Returns 1 when arg is that option, 0 when not, -1 on a missing value.
 */
static int take_option(const char *name, int argc, char **argv, int *i,
                       const char **value)
{
    const char *arg = argv[*i];
    size_t n = strlen(name);

    if (strncmp(arg, name, n) != 0)
        return 0;
    if (arg[n] == '=') {
        *value = arg + n + 1;
        return 1;
    }
    if (arg[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return usage_error("%s needs a value", name);
    *value = argv[++*i];
    return 1;
}

/* Handles the option at argv[*i]: 0, or -1 after a usage message. */
static int parse_option(cli_args_t *a, int argc, char **argv, int *i)
{
    const char *arg = argv[*i];
    const char *v;
    int rc;

    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)
        a->help = 1;
    else if (strcmp(arg, "--version") == 0)
        a->version = 1;
    else if (strcmp(arg, "-v") == 0 || strcmp(arg, "--verbose") == 0)
        a->verbose = 1;
    else if (strcmp(arg, "--strong") == 0)
        a->strong = 1;
    else if ((rc = take_option("--socket", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : (a->socket = v, 0);
    else if ((rc = take_option("--timeout", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : parse_timeout(v, &a->timeout_ms);
    else if ((rc = take_option("--min-version", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : parse_min_version(v, a);
    else if ((rc = take_option("--wait-ms", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : parse_wait(v, &a->wait_ms);
    else if ((rc = take_option("--limit", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : parse_limit(v, a);
    else if (strcmp(arg, "--all") == 0)
        a->all = 1;
    else if ((rc = take_option("--room", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : add_watch_id(&a->rooms, &a->nrooms, argc, v);
    else if ((rc = take_option("--conn", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : add_watch_id(&a->conns, &a->nconns, argc, v);
    else if ((rc = take_option("--count", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : parse_count(v, a);
    else if ((rc = take_option("--as", argc, argv, i, &v)) != 0)
        return rc < 0 ? rc : (a->as = v, 0);
    else if ((rc = take_option("--strategy", argc, argv, i, &v)) != 0) {
        if (rc < 0)
            return rc;
        a->strategy_arg = v;
        if (meshsync_strategy_parse(v, &a->strategy) < 0)
            return usage_error("unknown strategy '%s': want replace, merge "
                               "or deepMerge",
                               v);
    } else {
        return usage_error("unknown option '%s'", arg);
    }
    return 0;
}

/* An option starts with '-', unless it is "-" (stdin) or "-5" (a number). */
static int is_option(const char *arg)
{
    return arg[0] == '-' && arg[1] != '\0' && !isdigit((unsigned char)arg[1]);
}

static int parse_args(int argc, char **argv, cli_args_t *a)
{
    int options_done = 0;
    int i;

    memset(a, 0, sizeof(*a));
    a->timeout_ms = -1;
    a->wait_ms = -1;

    /* A slot per argument, and one more for omit_conn() to shift into. */
    a->words = calloc((size_t)argc + 1, sizeof(*a->words));
    if (a->words == NULL) {
        fputs("meshsync: internal: out of memory\n", stderr);
        return -1;
    }
    for (i = 1; i < argc; i++) {
        if (!options_done && strcmp(argv[i], "--") == 0) {
            options_done = 1;
        } else if (!options_done && is_option(argv[i])) {
            if (parse_option(a, argc, argv, &i) < 0)
                return -1;
        } else {
            a->words[a->nwords++] = argv[i];
        }
    }
    return 0;
}

/* Reads all of stdin into a NUL-terminated buffer the caller frees. */
static int read_stdin(char **out, size_t *out_len)
{
    size_t cap = 4096;
    size_t len = 0;
    char *buf = malloc(cap);

    while (buf != NULL) {
        size_t n = fread(buf + len, 1, cap - len - 1, stdin);

        len += n;
        if (len > INPUT_MAX) {
            fprintf(stderr, "meshsync: too_large: input exceeds %d bytes\n",
                    INPUT_MAX);
            break;
        }
        if (n == 0 && ferror(stdin)) {
            fprintf(stderr, "meshsync: cannot read standard input: %s\n",
                    strerror(errno));
            break;
        }
        if (n == 0) {
            buf[len] = '\0';
            *out = buf;
            *out_len = len;
            return 0;
        }
        if (len + 1 == cap) {
            char *bigger = realloc(buf, cap * 2);

            if (bigger == NULL)
                free(buf);
            buf = bigger;
            cap *= 2;
        }
    }
    if (buf == NULL)
        fputs("meshsync: internal: out of memory\n", stderr);
    free(buf);
    return -1;
}

static int fail_call(const meshsync_t *ms)
{
    const char *code = meshsync_errcode(ms);

    if (code == NULL)
        code = "internal";
    fprintf(stderr, "meshsync: %s: %s\n", code, meshsync_errmsg(ms));
    return strcmp(code, "io") == 0 ? EXIT_UNREACHABLE : EXIT_REQUEST;
}

/* Prints the health report; succeeds only when the sidecar is live. */
static int run_health(meshsync_t *ms, const cli_args_t *a, int room)
{
    (void)a;
    (void)room;
    meshsync_value_t v;
    json_t *report;
    int ready;

    if (meshsync_health(ms, &v) < 0)
        return fail_call(ms);
    puts(v.data);
    report = json_loads(v.data, 0, NULL);
    ready = json_is_true(json_object_get(report, "ready"));
    json_decref(report);
    meshsync_value_free(&v);
    return ready ? EXIT_OK : EXIT_REQUEST;
}


static int run_ping(meshsync_t *ms, const cli_args_t *a, int room)
{
    (void)a;
    (void)room;
    if (meshsync_ping(ms) < 0)
        return fail_call(ms);
    puts("pong");
    return EXIT_OK;
}

static int run_get(meshsync_t *ms, const cli_args_t *a, int room)
{
    const char *id = a->words[2];
    meshsync_value_t v = {0};
    int rc;

    if (a->min_version_arg != NULL && room)
        rc = meshsync_room_get_min(ms, id, a->min_version, a->wait_ms,
                                   MESHSYNC_JSON, &v);
    else if (a->min_version_arg != NULL)
        rc = meshsync_conn_get_min(ms, id, a->min_version, a->wait_ms,
                                   MESHSYNC_JSON, &v);
    else if (room)
        rc = meshsync_room_get(ms, id, MESHSYNC_JSON, &v);
    else
        rc = meshsync_conn_get(ms, id, MESHSYNC_JSON, &v);
    if (rc < 0)
        return fail_call(ms);

    if (a->verbose && v.stale && v.behind >= 0)
        printf("{\"value\":%s,\"version\":%" PRIu64
               ",\"stale\":true,\"behind\":%" PRId64 "}\n",
               v.data, v.version, v.behind);
    else if (a->verbose)
        printf("{\"value\":%s,\"version\":%" PRIu64 ",\"stale\":%s}\n", v.data,
               v.version, v.stale ? "true" : "false");
    else
        printf("%s\n", v.data);
    meshsync_value_free(&v);
    return EXIT_OK;
}

static int run_set(meshsync_t *ms, const cli_args_t *a, int room)
{
    const char *text = a->words[3];
    size_t len = strlen(text);
    char *input = NULL;
    uint64_t version = 0;
    int rc;

    if (strcmp(text, "-") == 0) {
        if (read_stdin(&input, &len) < 0)
            return EXIT_REQUEST;
        text = input;
    }
    if (room)
        rc = meshsync_room_set(ms, a->words[2], MESHSYNC_JSON, text, len,
                               a->strategy, &version);
    else
        rc = meshsync_conn_set(ms, a->words[2], MESHSYNC_JSON, text, len,
                               a->strategy, &version);
    free(input);
    if (rc < 0)
        return fail_call(ms);
    printf("{\"version\":%" PRIu64 "}\n", version);
    return EXIT_OK;
}

static int run_remove(meshsync_t *ms, const cli_args_t *a, int room)
{
    uint64_t version = 0;
    int rc;

    if (room)
        rc = meshsync_room_delete(ms, a->words[2], &version);
    else
        rc = meshsync_conn_close(ms, a->words[2], &version);
    if (rc < 0)
        return fail_call(ms);
    printf("{\"version\":%" PRIu64 "}\n", version);
    return EXIT_OK;
}

/* Prints {"key":"value"} with value as a JSON string. */
static int print_json_field(const char *key, const char *value)
{
    json_t *o = json_pack("{ss}", key, value);
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    if (text == NULL) {
        fputs("meshsync: internal: cannot print the reply\n", stderr);
        return EXIT_REQUEST;
    }
    printf("%s\n", text);
    free(text);
    return EXIT_OK;
}


/* conn open CONN: registers the connection (bound only with --as). */
static int run_open(meshsync_t *ms, const cli_args_t *a, int room)
{
    const char *conn = a->words[2] != NULL ? a->words[2] : a->as;

    (void)room;
    if (meshsync_conn_open(ms, a->words[2], -1) < 0)
        return fail_call(ms);
    return print_json_field("conn", conn);
}

/*
 * An id as a JSON string (the caller frees it), or NULL after a message.
 * Ids come from Redis as they are, and a Mesh server may have written one
 * that is not UTF-8, which JSON cannot hold: each byte that is not part
 * of a UTF-8 character prints as U+FFFD, with a warning, and the rest of
 * the output goes on.
 */
static char *id_json(const char *id, size_t id_len)
{
    static int warned;
    char *valid = malloc(id_len * 3 + 1), *text = NULL;
    size_t n = 0;
    json_t *s;

    if (valid == NULL)
        goto done;
    for (size_t i = 0; i < id_len;) {
        size_t c = ms_utf8_char(id + i, id_len - i);

        if (c == 0) {
            memcpy(valid + n, "\xef\xbf\xbd", 3);
            n += 3;
            i++;
            if (!warned++)
                fputs("meshsync: warning: an id is not valid UTF-8; its "
                      "invalid bytes print as U+FFFD\n",
                      stderr);
            continue;
        }
        memcpy(valid + n, id + i, c);
        n += c;
        i += c;
    }
    s = json_stringn_nocheck(valid, n);
    text = s != NULL ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    json_decref(s);
done:
    free(valid);
    if (text == NULL)
        fputs("meshsync: internal: out of memory\n", stderr);
    return text;
}


/*
 * Prints {"id":ID,"value":V,"version":N} on one line, with "stale":B
 * added when verbose. Returns 0, or -1 after a message.
 */
static int print_entry(const char *id, size_t id_len, const char *value,
                       uint64_t version, int stale, int verbose)
{
    char *text = id_json(id, id_len);

    if (text == NULL)
        return -1;
    printf("{\"id\":%s,\"value\":%s,\"version\":%" PRIu64 "%s}\n", text, value,
           version,
           !verbose ? ""
           : stale  ? ",\"stale\":true"
                    : ",\"stale\":false");
    free(text);
    return 0;
}


/* list: every entry, one page per request, each entry on its own line. */
static int run_list(meshsync_t *ms, const cli_args_t *a, int room)
{
    meshsync_page_t page;
    char *after = NULL;
    int rc;

    do {
        if (strcmp(a->words[1], "members") == 0)
            rc = meshsync_room_members(ms, a->words[2], after, a->limit,
                                       MESHSYNC_JSON, &page);
        else if (room)
            rc = meshsync_room_list(ms, after, a->limit, MESHSYNC_JSON, &page);
        else
            rc = meshsync_conn_list(ms, after, a->limit, MESHSYNC_JSON, &page);
        free(after);
        if (rc < 0)
            return fail_call(ms);
        for (size_t i = 0; i < page.count && rc == 0; i++)
            rc = print_entry(page.items[i].id, page.items[i].id_len,
                             page.items[i].data, page.items[i].version,
                             page.stale, a->verbose);

        /* The library checked that next is the page's last id. */
        after = page.next;
        page.next = NULL;
        meshsync_page_free(&page);
    } while (rc == 0 && after != NULL);
    free(after);
    return rc == 0 ? EXIT_OK : EXIT_REQUEST;
}


/* room join|leave ROOM CONN: prints {"version":N}, 0 if unchanged. */
static int run_membership(meshsync_t *ms, const cli_args_t *a, int room)
{
    uint64_t version = 0;
    int rc;

    (void)room;
    if (strcmp(a->words[1], "join") == 0)
        rc = meshsync_room_join(ms, a->words[2], a->words[3], &version);
    else
        rc = meshsync_room_leave(ms, a->words[2], a->words[3], &version);
    if (rc < 0)
        return fail_call(ms);
    printf("{\"version\":%" PRIu64 "}\n", version);
    return EXIT_OK;
}


/* mget ID...: one line per id, in order; MGET_BATCH ids per request. */
static int run_mget(meshsync_t *ms, const cli_args_t *a, int room)
{
    const char *const *ids = a->words + 2;
    size_t n = a->nwords > 2 ? (size_t)a->nwords - 2 : 0;
    meshsync_value_t *v;
    int status = EXIT_OK;

    v = calloc(n < MGET_BATCH ? n : MGET_BATCH, sizeof(*v));
    if (v == NULL) {
        fputs("meshsync: internal: out of memory\n", stderr);
        return EXIT_REQUEST;
    }
    for (size_t off = 0; off < n && status == EXIT_OK; off += MGET_BATCH) {
        size_t k = n - off < MGET_BATCH ? n - off : MGET_BATCH;
        int rc = room ? meshsync_room_mget(ms, ids + off, k, MESHSYNC_JSON, v)
                      : meshsync_conn_mget(ms, ids + off, k, MESHSYNC_JSON, v);

        if (rc < 0) {
            status = fail_call(ms);
            break;
        }
        for (size_t i = 0; i < k && status == EXIT_OK; i++) {
            if (print_entry(ids[off + i], strlen(ids[off + i]), v[i].data,
                            v[i].version, v[i].stale, a->verbose) < 0)
                status = EXIT_REQUEST;
        }
        meshsync_values_free(v, k);
    }
    free(v);
    return status;
}

/*
 * Prints a watch event on one line: {"kind":K,"id":ID,"value":V,
 * "version":N}, or {"reset":true,"version":N}. 0, or -1 after a message.
 */
static int print_event(const meshsync_event_t *ev)
{
    char *id;

    if (ev->reset) {
        printf("{\"reset\":true,\"version\":%" PRIu64 "}\n", ev->version);
        return 0;
    }

    id = id_json(ev->id, ev->id_len);
    if (id == NULL)
        return -1;
    printf("{\"kind\":\"%s\",\"id\":%s,\"value\":%s,\"version\":%" PRIu64 "}\n",
           ev->kind == MESHSYNC_ROOM ? "room" : "conn", id, ev->data,
           ev->version);
    free(id);
    return 0;
}


/* watch: one line per event, flushed at once, until --count or killed. */
static int run_watch(meshsync_t *ms, const cli_args_t *a, int room)
{
    meshsync_event_t ev;
    uint64_t seen = 0;
    int rc;

    (void)room;
    if (meshsync_watch(ms, a->rooms, a->nrooms, a->conns, a->nconns, a->all,
                       NULL) < 0)
        return fail_call(ms);
    while (a->count == 0 || seen < a->count) {
        rc = meshsync_next_event(ms, &ev, -1);
        if (rc < 0)
            return fail_call(ms);
        if (rc == 0)
            continue;
        rc = print_event(&ev);
        meshsync_event_free(&ev);
        if (rc < 0)
            return EXIT_REQUEST;
        if (fflush(stdout) != 0)
            return EXIT_REQUEST; /* main reports the write error */
        seen++;
    }
    return EXIT_OK;
}

/* Which options a command takes, beyond the common ones. */
enum {
    TAKES_STRATEGY = 1,
    TAKES_READ = 2,
    TAKES_LIMIT = 4,
    TAKES_IDS = 8, /* one id or more after the verb (nwords 0) */
    TAKES_WATCH = 16
};

typedef struct command_s {
    const char *noun;
    const char *verb; /* NULL: the noun alone is the command */
    const char *args;
    int nwords; /* words including noun and verb; 0: any number */
    int takes;  /* TAKES_* bits */
    int (*run)(meshsync_t *ms, const cli_args_t *a, int room);
} command_t;

static const command_t commands[] = {
    {"ping", NULL, "", 1, 0, run_ping},
    {"health", NULL, "", 1, 0, run_health},
    {"room", "get", " ROOM", 3, TAKES_READ, run_get},
    {"room", "set", " ROOM JSON", 4, TAKES_STRATEGY, run_set},
    {"room", "delete", " ROOM", 3, 0, run_remove},
    {"conn", "get", " CONN", 3, TAKES_READ, run_get},
    {"conn", "set", " CONN JSON", 4, TAKES_STRATEGY, run_set},
    {"conn", "close", " CONN", 3, 0, run_remove},
    {"conn", "open", " CONN", 3, 0, run_open},
    {"room", "list", "", 2, TAKES_LIMIT, run_list},
    {"conn", "list", "", 2, TAKES_LIMIT, run_list},
    {"room", "mget", " ROOM...", 0, TAKES_IDS, run_mget},
    {"room", "members", " ROOM", 3, TAKES_LIMIT, run_list},
    {"room", "join", " ROOM CONN", 4, 0, run_membership},
    {"room", "leave", " ROOM CONN", 4, 0, run_membership},
    {"conn", "mget", " CONN...", 0, TAKES_IDS, run_mget},
    {"watch", NULL, "", 1, TAKES_WATCH, run_watch},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* Finds the command the words name, or returns NULL after a message. */
static const command_t *find_command(const cli_args_t *a)
{
    const char *verb = a->nwords > 1 ? a->words[1] : "";
    int noun_known = 0;
    size_t i;

    if (a->nwords == 0) {
        usage_error("no command given");
        return NULL;
    }
    for (i = 0; i < N_COMMANDS; i++) {
        const command_t *c = &commands[i];

        if (strcmp(c->noun, a->words[0]) != 0)
            continue;
        noun_known = 1;
        if (c->verb == NULL || strcmp(c->verb, verb) == 0)
            return c;
    }
    if (!noun_known)
        usage_error("unknown command '%s'", a->words[0]);
    else
        usage_error("'%s' wants get, set, %s, list or mget", a->words[0],
                    strcmp(a->words[0], "room") == 0 ? "delete" : "close");
    return NULL;
}

/*
 * With --as, a conn command may leave its CONN out: it then means the
 * connection bound by hello. The words are shifted so CONN is NULL.
 */
static void omit_conn(cli_args_t *a, const command_t *c)
{
    if (a->as == NULL || strcmp(c->noun, "conn") != 0 ||
        a->nwords != c->nwords - 1)
        return;
    for (int i = a->nwords; i > 2; i--)
        a->words[i] = a->words[i - 1];
    a->words[2] = NULL;
    a->nwords++;
}


/* Checks the command line around the command; NULL after a message. */
static const command_t *check_command(cli_args_t *a)
{
    const command_t *c = find_command(a);

    if (c == NULL)
        return NULL;
    omit_conn(a, c);
    if (c->nwords != 0 && a->nwords != c->nwords) {
        usage_error("expected: meshsync %s%s%s%s%s", c->noun,
                    c->verb != NULL ? " " : "", c->verb != NULL ? c->verb : "",
                    c->args,
                    strcmp(c->noun, "conn") == 0
                        ? " (CONN may be left out after --as CONN)"
                        : "");
        return NULL;
    }
    if ((c->takes & TAKES_IDS) && a->nwords < 3) {
        usage_error("expected: meshsync %s %s%s", c->noun, c->verb, c->args);
        return NULL;
    }
    if (a->limit_arg != NULL && !(c->takes & TAKES_LIMIT)) {
        usage_error("--limit applies only to list");
        return NULL;
    }
    if ((a->nrooms > 0 || a->nconns > 0 || a->all || a->count_arg != NULL) &&
        !(c->takes & TAKES_WATCH)) {
        usage_error("--room, --conn, --all and --count apply only to watch");
        return NULL;
    }
    if ((c->takes & TAKES_WATCH) && a->nrooms == 0 && a->nconns == 0 &&
        !a->all) {
        usage_error("watch needs --room, --conn or --all");
        return NULL;
    }
    if (a->strategy_arg != NULL && !(c->takes & TAKES_STRATEGY)) {
        usage_error("--strategy applies only to set");
        return NULL;
    }
    if ((a->min_version_arg != NULL || a->strong) && !(c->takes & TAKES_READ)) {
        usage_error("--min-version and --strong apply only to get");
        return NULL;
    }
    if (a->wait_ms >= 0 && a->min_version_arg == NULL) {
        usage_error("--wait-ms needs --min-version");
        return NULL;
    }
    return c;
}

static int run_command(const cli_args_t *a, const command_t *c)
{
    int room = strcmp(c->noun, "room") == 0;
    meshsync_t *ms = meshsync_connect(a->socket);
    int status;

    if (ms == NULL) {
        fputs("meshsync: internal: out of memory\n", stderr);
        return EXIT_REQUEST;
    }
    if (meshsync_errcode(ms) != NULL) {
        status = fail_call(ms);
        meshsync_free(ms);
        return status;
    }
    if (a->timeout_ms >= 0)
        meshsync_set_timeout(ms, a->timeout_ms);
    meshsync_set_strong(ms, a->strong);
    if (a->as != NULL && meshsync_hello(ms, a->as) != 0) {
        status = fail_call(ms);
        meshsync_free(ms);
        return status;
    }

    status = c->run(ms, a, room);
    meshsync_free(ms);
    return status;
}

/* What main does with a parsed command line. */
static int run_args(cli_args_t *a)
{
    const command_t *c;
    int status;

    if (a->help) {
        fputs(help_text, stdout);
        return EXIT_OK;
    }
    if (a->version) {
        puts("meshsync " MESHSYNC_VERSION);
        return EXIT_OK;
    }
    c = check_command(a);
    if (c == NULL)
        return EXIT_USAGE;

    status = run_command(a, c);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "meshsync: cannot write standard output: %s\n",
                strerror(errno));
        return EXIT_REQUEST;
    }
    return status;
}

int main(int argc, char **argv)
{
    cli_args_t a;
    int status = EXIT_USAGE;

    if (parse_args(argc, argv, &a) == 0)
        status = run_args(&a);
    free(a.words);
    free(a.rooms);
    free(a.conns);
    return status;
}
