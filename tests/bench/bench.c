/*
 * bench.c - meshsync-bench: measures meshsyncd against its alternatives
 * in the same run (a do-nothing echo server, Redis HGET, raw EVALSHA of
 * write.lua, Redis pub/sub) and prints a table, CSV files, a CDF plot and
 * one line per performance target. Entry point: main(). Bench process,
 * single-threaded; children: redis-server, meshsyncd, the echo server.
 *
 * Every process it starts is stopped on every exit path (the signal
 * handler kills them on SIGINT/SIGTERM, see bench_proc.h), and the
 * temporary directory goes with them.
 */
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench_load.h"
#include "error.h"

#define SAMPLES_FULL  200000
#define SAMPLES_QUICK 8000
#define LAT_CAP       (4u * 1024 * 1024)
#define PLOT_WAIT_MS  60000

/* Idle: the servers used at most 3 ms of CPU in the last 100 ms. */
#define SETTLE_WINDOW_NS (100 * 1000000LL)
#define SETTLE_BUSY_NS   (3 * 1000000LL)
#define SETTLE_TRIES     600
#define SETTLE_SAY_NS    (1000 * 1000000LL)

static const char usage[] =
    "usage: meshsync-bench [--quick] [--out DIR] [--entries N]\n"
    "                      [--pin same|split|none] [--value-bytes B]\n"
    "                      [--sizes N,N,...] [--samples K]\n"
    "\n"
    "Measures meshsyncd against a do-nothing echo server, Redis HGET,\n"
    "raw EVALSHA of write.lua and Redis pub/sub, in one run, with its own\n"
    "redis-server and sidecars in a temporary directory.\n"
    "\n"
    "  --quick           fewer samples, sizes 1000,100000,300000, 2 s\n"
    "                    convergence runs: under a minute once the\n"
    "                    sidecars' full resyncs meet their goal\n"
    "  --out DIR         results.csv, cdf.csv, latency-cdf.png (default\n"
    "                    ./bench-results)\n"
    "  --entries N       connections of the main data set, and N/10 rooms\n"
    "                    (default 100000)\n"
    "  --pin MODE        same: everything on CPU 0; split (default): the\n"
    "                    bench on CPU 0, the servers on CPU 1; none\n"
    "  --value-bytes B   metadata size as JSON (default 200)\n"
    "  --sizes LIST      scale step sizes (default 1000,100000,1000000)\n"
    "  --samples K       latency samples per measurement (default 200000,\n"
    "                    quick 8000); pipelined runs take 10 times as many\n"
    "\n"
    "Exits 0 when the run completed (whether targets were met or not), 1\n"
    "when something failed, 2 on a usage error.\n";

void bench_fail(bench_t *b, const char *fmt, ...)
{
    va_list ap;

    b->failures++;
    fprintf(stderr, "bench: FAILED: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}


size_t bench_random(bench_t *b, size_t n)
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    return n > 0 ? (size_t)(b->rng % n) : 0;
}


size_t bench_warmup(size_t count)
{
    size_t w = count / 10;

    return w < 2000 ? w : 2000;
}


int bench_pool_gets(bench_t *b, bench_reqs_t *r, bench_kind_t kind, size_t n,
                    size_t from, size_t size)
{
    char id[32];
    int rc = bench_reqs_init(r, size);

    for (size_t i = 0; i < size && rc == 0; i++) {
        bench_req_id(kind, from + bench_random(b, n), id, sizeof(id));
        rc = bench_reqs_get(r, kind, id, i);
    }
    return rc;
}


/* The CPU time used so far by every server process of the run. */
static int64_t servers_cpu_ns(const bench_t *b)
{
    pid_t pids[] = {b->redis.pid, b->a.pid, b->b.pid, b->echo_pid, b->scale};
    int64_t sum = 0;

    for (size_t i = 0; i < sizeof(pids) / sizeof(pids[0]); i++) {
        int64_t t = pids[i] > 0 ? bench_proc_cpu_ns(pids[i]) : 0;

        sum += t > 0 ? t : 0;
    }
    return sum;
}


void bench_settle(bench_t *b, const char *before)
{
    int64_t t0 = bench_now_ns(), next = t0;
    int64_t last = servers_cpu_ns(b);

    for (int i = 0; i < SETTLE_TRIES && !bench_proc_interrupted(); i++) {
        int64_t used;

        next += SETTLE_WINDOW_NS;
        bench_sleep_until(next);
        used = servers_cpu_ns(b);
        if (used - last <= SETTLE_BUSY_NS) {
            if (bench_now_ns() - t0 > SETTLE_SAY_NS)
                fprintf(stderr, "bench: servers busy %.1f s before %s\n",
                        (double)(bench_now_ns() - t0) / 1e9, before);
            return;
        }
        last = used;
    }
    fprintf(stderr, "bench: servers still busy before %s after %.0f s\n",
            before, (double)(bench_now_ns() - t0) / 1e9);
}


/* Busy time of all CPUs since boot, from /proc/stat, in ns. */
static int64_t machine_busy_ns(void)
{
    unsigned long long v[8] = {0};
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/stat", "r");
    int n = 0;

    if (f != NULL) {
        n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
                   &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
        fclose(f);
    }
    if (n < 7 || hz <= 0)
        return 0;
    /* user, nice, system, irq, softirq: not idle, iowait or steal. */
    return (int64_t)(v[0] + v[1] + v[2] + v[5] + v[6]) * (1000000000 / hz);
}


void bench_probe_begin(bench_t *b, bench_probe_t *p)
{
    p->t_ns = bench_now_ns();
    p->busy_ns = machine_busy_ns();
    p->bench_ns = bench_proc_cpu_ns(getpid());
    p->servers_ns = servers_cpu_ns(b);
}


void bench_probe_end(bench_t *b, const bench_probe_t *p, bench_row_t *r,
                     size_t ops)
{
    int64_t elapsed = bench_now_ns() - p->t_ns;
    int64_t busy = machine_busy_ns() - p->busy_ns;
    int64_t servers = servers_cpu_ns(b) - p->servers_ns;
    int64_t ours = bench_proc_cpu_ns(getpid()) - p->bench_ns + servers;
    double other;

    if (elapsed <= 0 || p->busy_ns == 0)
        return;
    other = 100.0 * (double)(busy - ours) / (double)elapsed;
    r->other_load = other > 0 ? other : 0;
    if (ops > 0)
        r->server_us = (double)servers / 1000.0 / (double)ops;
}


/* --- options ---------------------------------------------------------- */

static int parse_size(const char *s, size_t min, size_t max, size_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return MS_EINVAL;
    *out = (size_t)v;
    return 0;
}


static int parse_sizes(const char *s, bench_opts_t *o)
{
    char buf[256], *save = NULL;

    if (strlen(s) >= sizeof(buf))
        return MS_EINVAL;
    strcpy(buf, s);
    o->nsizes = 0;
    for (char *t = strtok_r(buf, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        if (o->nsizes == BENCH_SIZES_MAX ||
            parse_size(t, 100, 100000000, &o->sizes[o->nsizes++]) < 0)
            return MS_EINVAL;
    }
    return o->nsizes > 0 ? 0 : MS_EINVAL;
}


static int parse_pin(const char *s, bench_pin_t *pin)
{
    if (strcmp(s, "same") == 0)
        *pin = BENCH_PIN_SAME;
    else if (strcmp(s, "split") == 0)
        *pin = BENCH_PIN_SPLIT;
    else if (strcmp(s, "none") == 0)
        *pin = BENCH_PIN_NONE;
    else
        return MS_EINVAL;
    return 0;
}


/* Defaults that depend on --quick, unless given. */
static void finish_opts(bench_opts_t *o, bool sizes_given, bool samples_given)
{
    static const size_t full[] = {1000, 100000, 1000000};
    static const size_t quick[] = {1000, 100000, 300000};

    if (!sizes_given) {
        memcpy(o->sizes, o->quick ? quick : full, sizeof(full));
        o->nsizes = 3;
    }
    if (!samples_given)
        o->samples = o->quick ? SAMPLES_QUICK : SAMPLES_FULL;
}


static int parse_opts(int argc, char **argv, bench_opts_t *o)
{
    static const struct option longs[] = {
        {"quick", no_argument, NULL, 'q'},
        {"out", required_argument, NULL, 'o'},
        {"entries", required_argument, NULL, 'e'},
        {"pin", required_argument, NULL, 'p'},
        {"value-bytes", required_argument, NULL, 'v'},
        {"sizes", required_argument, NULL, 's'},
        {"samples", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    bool sizes_given = false, samples_given = false;
    int c, rc = 0;

    *o = (bench_opts_t){.out_dir = "bench-results",
                        .entries = 100000,
                        .pin = BENCH_PIN_SPLIT,
                        .value_bytes = 200};
    while (rc == 0 && (c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'q':
            o->quick = true;
            break;
        case 'o':
            o->out_dir = optarg;
            break;
        case 'e':
            rc = parse_size(optarg, 100, 100000000, &o->entries);
            break;
        case 'p':
            rc = parse_pin(optarg, &o->pin);
            break;
        case 'v':
            rc = parse_size(optarg, 16, 60000, &o->value_bytes);
            break;
        case 's':
            rc = parse_sizes(optarg, o);
            sizes_given = true;
            break;
        case 'k':
            rc = parse_size(optarg, 100, 100000000, &o->samples);
            samples_given = true;
            break;
        case 'h':
            fputs(usage, stdout);
            exit(0);
        default:
            rc = MS_EINVAL;
            break;
        }
    }
    if (rc == 0 && optind < argc)
        rc = MS_EINVAL;
    finish_opts(o, sizes_given, samples_given);
    return rc;
}


/* --- the run ---------------------------------------------------------- */

static int setup(bench_t *b)
{
    size_t pipe_samples = BENCH_PIPE_FACTOR * b->o.samples;

    b->cpu_client = b->o.pin == BENCH_PIN_NONE ? -1 : 0;
    b->cpu_server = b->o.pin == BENCH_PIN_SPLIT  ? 1
                    : b->o.pin == BENCH_PIN_SAME ? 0
                                                 : -1;
    b->rng = 0x9e3779b97f4a7c15ull;
    b->merge_trips = b->trips_raw = NAN;
    if (bench_proc_pin(b->cpu_client) < 0) {
        bench_fail(b, "cannot pin the bench to CPU %d", b->cpu_client);
        return MS_EINTERNAL;
    }
    if (bench_samples_init(&b->lat, pipe_samples > LAT_CAP ? pipe_samples
                                                           : LAT_CAP) < 0 ||
        bench_proc_dir_create(b->dir, sizeof(b->dir)) < 0) {
        bench_fail(b, "cannot allocate samples or make a temporary directory");
        return MS_EIO;
    }
    if (bench_redis_start(&b->redis, b->dir, b->cpu_server) < 0) {
        bench_fail(b, "redis-server did not start");
        return MS_EINTERNAL;
    }
    if (bench_load_script(b->redis.ctl, WRITE_LUA_PATH, &b->script) < 0) {
        bench_fail(b, "cannot load write.lua");
        return MS_EIO;
    }
    return 0;
}


static void teardown(bench_t *b)
{
    bench_step_stop_main(b);
    bench_redis_stop(&b->redis);
    bench_proc_dir_remove(b->dir);
    bench_samples_free(&b->lat);
}


/* Measurements 1 to 5 share sidecar A; a failed start skips them. */
static void run_main(bench_t *b)
{
    int (*const steps[])(bench_t *) = {bench_step_echo, bench_step_hget,
                                       bench_step_reads, bench_step_writes,
                                       bench_step_converge};

    if (bench_step_main(b) < 0)
        return;
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        if (bench_proc_interrupted())
            return;
        steps[i](b);
    }
}


static void run_scale(bench_t *b)
{
    size_t largest = 0;

    for (size_t i = 0; i < b->o.nsizes; i++)
        largest = b->o.sizes[i] > largest ? b->o.sizes[i] : largest;
    for (size_t i = 0; i < b->o.nsizes && !bench_proc_interrupted(); i++)
        bench_step_scale(b, b->o.sizes[i], b->o.sizes[i] == largest);
}


static void print_header(const bench_t *b)
{
    static const char *const pins[] = {"same", "split", "none"};

    printf("meshsync-bench: %s run, %zu entries (+%zu rooms), values of %zu "
           "bytes, %zu samples per measurement, pin %s\n",
           b->o.quick ? "quick" : "full", b->o.entries, b->o.entries / 10,
           b->o.value_bytes, b->o.samples, pins[b->o.pin]);
    printf("sidecars: --log-level warn --scrub-interval-ms %s\n",
           BENCH_SCRUB_INTERVAL);
    printf("scale sizes:");
    for (size_t i = 0; i < b->o.nsizes; i++)
        printf("%s%zu", i ? "," : " ", b->o.sizes[i]);
    printf("\n");
    fflush(stdout);
}


/* --- output ----------------------------------------------------------- */

/* The full path of an executable found in $PATH, or false. */
static bool find_in_path(const char *name, char *out, size_t size)
{
    const char *path = getenv("PATH");
    char buf[4096], *save = NULL;

    if (path == NULL || strlen(path) >= sizeof(buf))
        return false;
    strcpy(buf, path);
    for (char *d = strtok_r(buf, ":", &save); d != NULL;
         d = strtok_r(NULL, ":", &save)) {
        int n = snprintf(out, size, "%s/%s", d, name);

        if (n > 0 && (size_t)n < size && access(out, X_OK) == 0)
            return true;
    }
    return false;
}


static void plot(const bench_t *b)
{
    char gnuplot[1024], vars[2048], log[4096];
    char *argv[] = {gnuplot, "-e", vars, GNUPLOT_SCRIPT, NULL};
    pid_t pid;

    if (b->table.ncdf == 0) {
        printf("latency-cdf.png skipped: no latency was measured\n");
        return;
    }
    if (!find_in_path("gnuplot", gnuplot, sizeof(gnuplot))) {
        printf("latency-cdf.png skipped: gnuplot is not installed\n");
        return;
    }
    snprintf(vars, sizeof(vars),
             "datafile='%s/cdf.csv'; outfile='%s/"
             "latency-cdf.png'",
             b->o.out_dir, b->o.out_dir);
    /* The temporary directory is gone by now: the log goes beside. */
    snprintf(log, sizeof(log), "%s/gnuplot.log", b->o.out_dir);
    pid = bench_proc_spawn(gnuplot, argv, -1, log);

    /* Signal 0 sends nothing: this only waits for gnuplot to finish. */
    if (pid < 0 || bench_proc_stop(pid, 0, PLOT_WAIT_MS) < 0) {
        printf("latency-cdf.png skipped: gnuplot failed (see %s)\n", log);
        return;
    }
    unlink(log);
    printf("wrote %s/latency-cdf.png\n", b->o.out_dir);
}


static void write_files(bench_t *b)
{
    char path[4096];

    if (mkdir(b->o.out_dir, 0755) != 0 && errno != EEXIST) {
        bench_fail(b, "cannot create %s: %s", b->o.out_dir, strerror(errno));
        return;
    }
    snprintf(path, sizeof(path), "%s/results.csv", b->o.out_dir);
    if (bench_table_csv(&b->table, path) < 0)
        bench_fail(b, "cannot write %s", path);
    snprintf(path, sizeof(path), "%s/cdf.csv", b->o.out_dir);
    if (bench_cdf_csv(&b->table, path) < 0) {
        bench_fail(b, "cannot write %s", path);
        return;
    }
    printf("wrote %s/results.csv and %s/cdf.csv\n", b->o.out_dir, b->o.out_dir);
    plot(b);
}


/* --- targets ---------------------------------------------------------- */

static double row_field(const bench_t *b, const char *name, char field)
{
    const bench_row_t *r = bench_table_find(&b->table, name);

    if (r == NULL || r->failures > 0)
        return NAN;
    switch (field) {
    case '5':
        return r->p50;
    case '9':
        return r->p99;
    case 'o':
        return r->ops;
    default:
        return r->value;
    }
}


static double scale_field(const bench_t *b, size_t size, const char *what,
                          char field)
{
    char name[BENCH_NAME_MAX];

    snprintf(name, sizeof(name), "scale %zu %s", size, what);
    return row_field(b, name, field);
}


/* One target line; a figure that could not be measured misses. */
static void target(const char *name, double measured, bool at_most, double goal)
{
    /* Compared as printed: 1.004 calls per merge is "1.00", met. */
    double shown = round(measured * 100) / 100;
    bool met = !isnan(measured) && (at_most ? shown <= goal : shown >= goal);

    printf("target %s measured=%.2f goal=%s%.2f %s\n", name, measured,
           at_most ? "<=" : ">=", goal, met ? "met" : "missed");
}


static void print_targets(const bench_t *b)
{
    size_t largest = 0;

    for (size_t i = 0; i < b->o.nsizes; i++)
        largest = b->o.sizes[i] > largest ? b->o.sizes[i] : largest;
    target("read_p50_vs_echo",
           row_field(b, "ms conn.get hit 1c", '5') /
               row_field(b, "A echo 1c", '5'),
           true, 1.25);
    target("read_p99_vs_echo",
           row_field(b, "ms conn.get hit 1c", '9') /
               row_field(b, "A echo 1c", '9'),
           true, 1.5);
    target("pipelined_read_vs_hget",
           row_field(b, "ms conn.get hit 16x16", 'o') /
               row_field(b, "B hget unix 16x16", 'o'),
           false, 1.0);
    target("replace_p50_vs_evalsha",
           row_field(b, "ms conn.set replace 1c", '5') /
               row_field(b, "raw evalsha replace 1c", '5'),
           true, 1.3);
    target("merge_redis_round_trips",
           row_field(b, "merge evalsha calls per merge", 'v'), true, 1);
    target("convergence_p99_vs_pubsub",
           row_field(b, "ms converge A->B 5000/s", '9') /
               row_field(b, "pubsub 5000/s", '9'),
           true, 2);
    target("read_p50_largest_vs_1k",
           scale_field(b, largest, "conn.get hit 1c", '5') /
               scale_field(b, 1000, "conn.get hit 1c", '5'),
           true, 1.10);
    target("full_resync_100k_s", scale_field(b, 100000, "full resync", 'v'),
           true, 3);
    target("warm_restart_first_read_ms",
           scale_field(b, 100000, "warm restart first read", 'v'), true, 100);
    target("read_p99_during_resync_ms",
           scale_field(b, largest, "reads in resync", '9') / 1000, true, 10);
    target("daemon_rss_100k_mib",
           scale_field(b, 100000, "daemon peak RSS", 'v'), true, 32);
}


int main(int argc, char **argv)
{
    static bench_t b;

    if (parse_opts(argc, argv, &b.o) < 0) {
        fputs(usage, stderr);
        return 2;
    }
    bench_proc_signals();
    print_header(&b);
    if (setup(&b) == 0) {
        run_main(&b);
        bench_step_stop_main(&b);
        run_scale(&b);
    }
    teardown(&b);
    if (bench_proc_interrupted())
        bench_fail(&b, "interrupted");

    bench_table_ratios(&b.table);
    bench_table_print(&b.table, stdout);
    write_files(&b);
    if (b.failures > 0)
        printf("the run had %u failures: figures may be missing or wrong\n",
               b.failures);
    print_targets(&b);
    return b.failures > 0 ? 1 : 0;
}
