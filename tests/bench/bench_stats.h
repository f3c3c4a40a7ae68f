/*
 * bench_stats.h - meshsync-bench's figures: latency samples and their
 * percentiles, the table of results (one row per measurement, with its
 * ratio against a baseline row), latency CDFs, and the files results.csv
 * and cdf.csv. Bench process, single-threaded.
 */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Latencies in nanoseconds, stored in memory allocated before timing. */
typedef struct bench_samples_s {
    int64_t *ns;
    size_t n;
    size_t cap;
    size_t dropped; /* samples that came past cap and were not kept */
} bench_samples_t;

int bench_samples_init(bench_samples_t *s, size_t cap);
void bench_samples_free(bench_samples_t *s);
void bench_samples_reset(bench_samples_t *s);

static inline void bench_samples_add(bench_samples_t *s, int64_t ns)
{
    if (s->n < s->cap)
        s->ns[s->n++] = ns;
    else
        s->dropped++;
}

/* Sorts the samples; the percentile functions need them sorted. */
void bench_samples_sort(bench_samples_t *s);

/* The q-quantile (nearest rank) in microseconds; NAN when empty. */
double bench_samples_us(const bench_samples_t *s, double q);

#define BENCH_ROWS_MAX   64
#define BENCH_CDF_MAX    8
#define BENCH_CDF_POINTS 200
#define BENCH_NAME_MAX   48

/* One measurement. Figures it does not have are NAN. */
typedef struct bench_row_s {
    char name[BENCH_NAME_MAX];
    char baseline[BENCH_NAME_MAX]; /* the row it is compared with, or "" */
    size_t count;
    double p50, p99, p999, max;             /* microseconds */
    double ops;                             /* operations per second */
    double value;                           /* a figure that is not a latency */
    char unit[12];                          /* value's unit */
    double ratio_p50, ratio_p99, ratio_ops; /* this row / the baseline's */
    bool pipelined;                         /* its ops ratio is the point */
    double other_load; /* % of a CPU used meanwhile by other processes */
    double server_us;  /* the servers' CPU time per operation */
    unsigned failures;
    char note[80];
} bench_row_t;

/* A latency CDF: the latency at quantiles 0, 1/200, ..., 1. */
typedef struct bench_cdf_s {
    char name[32];
    size_t count;
    double us[BENCH_CDF_POINTS + 1];
} bench_cdf_t;

typedef struct bench_table_s {
    bench_row_t rows[BENCH_ROWS_MAX];
    size_t n;
    bench_cdf_t cdf[BENCH_CDF_MAX];
    size_t ncdf;
} bench_table_t;

/*
 * Adds a row (every figure NAN) compared with baseline (NULL: none).
 * Past BENCH_ROWS_MAX rows the last one is reused.
 */
bench_row_t *bench_table_add(bench_table_t *t, const char *name,
                             const char *baseline);

/* The row called name, or NULL. */
const bench_row_t *bench_table_find(const bench_table_t *t, const char *name);

/* Sorts s and sets the row's count and percentiles from it. */
void bench_row_latency(bench_row_t *r, bench_samples_t *s);

/* Fills every row's ratios from its baseline row. */
void bench_table_ratios(bench_table_t *t);

/* The table for people: latency rows, then the other figures. */
void bench_table_print(const bench_table_t *t, FILE *out);

/* results.csv: one row per measurement with every figure and ratio. */
int bench_table_csv(const bench_table_t *t, const char *path);

/* Records a CDF of the (sorted) samples under name. */
void bench_cdf_add(bench_table_t *t, const char *name,
                   const bench_samples_t *s);

/* cdf.csv: series,quantile,latency_us. */
int bench_cdf_csv(const bench_table_t *t, const char *path);

#endif
