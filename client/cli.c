/*
 * cli.c - the meshsync command: one request to the sidecar per run.
 *
 * main() parses the command line (options may stand anywhere among the
 * command words), reads a JSON value from an argument or stdin, makes the
 * call through libmeshsync and prints the result as JSON on one line.
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

#ifndef MESHSYNC_VERSION
#define MESHSYNC_VERSION "0.1.0"
#endif

enum { EXIT_OK = 0, EXIT_REQUEST = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

/* The sidecar refuses bigger frames, so more input cannot succeed. */
#define INPUT_MAX (1024 * 1024)

#define MAX_WORDS 4

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
    const char *words[MAX_WORDS];
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
    "  conn close [CONN]   remove a connection's metadata\n"
    "                      (CONN may be left out after --as CONN)\n"
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
    "  -v, --verbose    for get: print "
    "{\"value\":V,\"version\":N,\"stale\":B}\n"
    "                   (and \"behind\":N, in versions, when stale)\n"
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
    for (i = 1; i < argc; i++) {
        if (!options_done && strcmp(argv[i], "--") == 0) {
            options_done = 1;
        } else if (!options_done && is_option(argv[i])) {
            if (parse_option(a, argc, argv, &i) < 0)
                return -1;
        } else if (a->nwords == MAX_WORDS) {
            return usage_error("unexpected argument '%s'", argv[i]);
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
static int run_health(meshsync_t *ms)
{
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


static int run_ping(meshsync_t *ms)
{
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

typedef enum { CMD_PING, CMD_HEALTH, CMD_GET, CMD_SET, CMD_REMOVE } cmd_t;

typedef struct command_s {
    const char *noun;
    const char *verb; /* NULL: the noun alone is the command */
    const char *args;
    int nwords;
    cmd_t cmd;
} command_t;

static const command_t commands[] = {
    {"ping", NULL, "", 1, CMD_PING},
    {"health", NULL, "", 1, CMD_HEALTH},
    {"room", "get", " ROOM", 3, CMD_GET},
    {"room", "set", " ROOM JSON", 4, CMD_SET},
    {"room", "delete", " ROOM", 3, CMD_REMOVE},
    {"conn", "get", " CONN", 3, CMD_GET},
    {"conn", "set", " CONN JSON", 4, CMD_SET},
    {"conn", "close", " CONN", 3, CMD_REMOVE},
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
        usage_error("'%s' wants get, set or %s", a->words[0],
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
    if (a->nwords != c->nwords) {
        usage_error("expected: meshsync %s%s%s%s%s", c->noun,
                    c->verb != NULL ? " " : "", c->verb != NULL ? c->verb : "",
                    c->args,
                    strcmp(c->noun, "conn") == 0 && c->cmd != CMD_PING
                        ? " (CONN may be left out after --as CONN)"
                        : "");
        return NULL;
    }
    if (a->strategy_arg != NULL && c->cmd != CMD_SET) {
        usage_error("--strategy applies only to set");
        return NULL;
    }
    if ((a->min_version_arg != NULL || a->strong) && c->cmd != CMD_GET) {
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

    if (c->cmd == CMD_PING)
        status = run_ping(ms);
    else if (c->cmd == CMD_HEALTH)
        status = run_health(ms);
    else if (c->cmd == CMD_GET)
        status = run_get(ms, a, room);
    else if (c->cmd == CMD_SET)
        status = run_set(ms, a, room);
    else
        status = run_remove(ms, a, room);
    meshsync_free(ms);
    return status;
}

int main(int argc, char **argv)
{
    const command_t *c;
    cli_args_t a;
    int status;

    if (parse_args(argc, argv, &a) < 0)
        return EXIT_USAGE;
    if (a.help) {
        fputs(help_text, stdout);
        return EXIT_OK;
    }
    if (a.version) {
        puts("meshsync " MESHSYNC_VERSION);
        return EXIT_OK;
    }
    c = check_command(&a);
    if (c == NULL)
        return EXIT_USAGE;

    status = run_command(&a, c);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "meshsync: cannot write standard output: %s\n",
                strerror(errno));
        return EXIT_REQUEST;
    }
    return status;
}
