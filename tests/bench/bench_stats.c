/*
 * bench_stats.c - samples, percentiles, the result table and the CSV
 * files (see bench_stats.h). Entry points: bench_samples_*(),
 * bench_table_*(), bench_cdf_*(). Bench process, single-threaded; only
 * called outside timed regions (bench_samples_add() aside).
 */
#include "bench_stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Other processes' CPU use worth a mention next to a row, in %. */
#define OTHER_LOAD_SHOWN 5.0

int bench_samples_init(bench_samples_t *s, size_t cap)
{
    *s = (bench_samples_t){0};
    s->ns = malloc(cap * sizeof(*s->ns));
    if (s->ns == NULL)
        return MS_ENOMEM;
    s->cap = cap;

    /* Touch every page now, not on the first sample of a timed run. */
    memset(s->ns, 0, cap * sizeof(*s->ns));
    return 0;
}


void bench_samples_free(bench_samples_t *s)
{
    free(s->ns);
    *s = (bench_samples_t){0};
}


void bench_samples_reset(bench_samples_t *s)
{
    s->n = 0;
    s->dropped = 0;
}


static int compare_ns(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}


void bench_samples_sort(bench_samples_t *s)
{
    qsort(s->ns, s->n, sizeof(*s->ns), compare_ns);
}


double bench_samples_us(const bench_samples_t *s, double q)
{
    double rank;
    size_t i;

    if (s->n == 0)
        return NAN;
    rank = ceil(q * (double)s->n);
    i = rank < 1 ? 0 : (size_t)rank - 1;
    if (i >= s->n)
        i = s->n - 1;
    return (double)s->ns[i] / 1000.0;
}


/* --- the table -------------------------------------------------------- */

bench_row_t *bench_table_add(bench_table_t *t, const char *name,
                             const char *baseline)
{
    bench_row_t *r = &t->rows[t->n < BENCH_ROWS_MAX ? t->n++ : t->n - 1];

    *r = (bench_row_t){.p50 = NAN,
                       .p99 = NAN,
                       .p999 = NAN,
                       .max = NAN,
                       .ops = NAN,
                       .value = NAN,
                       .ratio_p50 = NAN,
                       .ratio_p99 = NAN,
                       .ratio_ops = NAN,
                       .other_load = NAN,
                       .server_us = NAN};
    snprintf(r->name, sizeof(r->name), "%s", name);
    snprintf(r->baseline, sizeof(r->baseline), "%s", baseline ? baseline : "");
    return r;
}


const bench_row_t *bench_table_find(const bench_table_t *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++) {
        if (strcmp(t->rows[i].name, name) == 0)
            return &t->rows[i];
    }
    return NULL;
}


void bench_row_latency(bench_row_t *r, bench_samples_t *s)
{
    bench_samples_sort(s);
    r->count = s->n;
    r->p50 = bench_samples_us(s, 0.50);
    r->p99 = bench_samples_us(s, 0.99);
    r->p999 = bench_samples_us(s, 0.999);
    r->max = bench_samples_us(s, 1.0);
}


static double ratio(double a, double b)
{
    return isnan(a) || isnan(b) || b == 0 ? NAN : a / b;
}


void bench_table_ratios(bench_table_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        bench_row_t *r = &t->rows[i];
        const bench_row_t *b = bench_table_find(t, r->baseline);

        if (b == NULL)
            continue;
        r->ratio_p50 = ratio(r->p50, b->p50);
        r->ratio_p99 = ratio(r->p99, b->p99);
        r->ratio_ops = ratio(r->ops, b->ops);
    }
}


/* A figure, or "-" when the row has none. */
static const char *fig(char *buf, size_t size, const char *fmt, double v)
{
    if (isnan(v))
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, fmt, v);
    return buf;
}


static void print_vs(const bench_row_t *r, FILE *out)
{
    if (r->baseline[0] == '\0')
        return;
    fprintf(out, "  vs %s:", r->baseline);
    if (r->pipelined && !isnan(r->ratio_ops))
        fprintf(out, " ops x%.2f", r->ratio_ops);
    else if (!isnan(r->ratio_p50))
        fprintf(out, " p50 x%.2f p99 x%.2f", r->ratio_p50, r->ratio_p99);
    else if (!isnan(r->ratio_ops))
        fprintf(out, " ops x%.2f", r->ratio_ops);
}


static void print_latency_row(const bench_row_t *r, FILE *out)
{
    char a[24], b[24], c[24], d[24], e[24];

    fprintf(
        out, "%-28s %7zu %8s %8s %8s %9s %7s", r->name, r->count,
        fig(a, sizeof(a), "%.1f", r->p50), fig(b, sizeof(b), "%.1f", r->p99),
        fig(c, sizeof(c), "%.1f", r->p999), fig(d, sizeof(d), "%.0f", r->ops),
        fig(e, sizeof(e), "%.1f", r->server_us));
    print_vs(r, out);
    if (r->failures > 0)
        fprintf(out, "  FAILED %u", r->failures);
    if (r->note[0] != '\0')
        fprintf(out, "  (%s)", r->note);
    if (r->other_load >= OTHER_LOAD_SHOWN)
        fprintf(out, "  [other load %.0f%%]", r->other_load);
    fputc('\n', out);
}


static void print_value_row(const bench_row_t *r, FILE *out)
{
    fprintf(out, "%-34s %12.3f %-6s", r->name, r->value, r->unit);
    if (r->other_load >= OTHER_LOAD_SHOWN)
        fprintf(out, "  [other load %.0f%%]", r->other_load);
    if (r->failures > 0)
        fprintf(out, "  FAILED %u", r->failures);
    if (r->note[0] != '\0')
        fprintf(out, "  (%s)", r->note);
    fputc('\n', out);
}


void bench_table_print(const bench_table_t *t, FILE *out)
{
    fprintf(out, "\n%-28s %7s %8s %8s %8s %9s %7s  %s\n", "measurement",
            "count", "p50 us", "p99 us", "p99.9 us", "ops/s", "srv us",
            "ratio");
    for (size_t i = 0; i < t->n; i++) {
        if (isnan(t->rows[i].value))
            print_latency_row(&t->rows[i], out);
    }
    fprintf(out, "\n%-34s %12s %-6s\n", "figure", "value", "unit");
    for (size_t i = 0; i < t->n; i++) {
        if (!isnan(t->rows[i].value))
            print_value_row(&t->rows[i], out);
    }
    fputc('\n', out);
}


/* A CSV field: empty for NAN. */
static void csv_num(FILE *f, double v, const char *fmt)
{
    fputc(',', f);
    if (!isnan(v))
        fprintf(f, fmt, v);
}


int bench_table_csv(const bench_table_t *t, const char *path)
{
    FILE *f = fopen(path, "w");

    if (f == NULL)
        return MS_EIO;
    fprintf(f, "name,count,p50_us,p99_us,p999_us,max_us,ops_per_s,value,unit,"
               "baseline,ratio_p50,ratio_p99,ratio_ops,failures,"
               "other_load_pct,server_cpu_us_per_op,note\n");
    for (size_t i = 0; i < t->n; i++) {
        const bench_row_t *r = &t->rows[i];

        fprintf(f, "%s,%zu", r->name, r->count);
        csv_num(f, r->p50, "%.3f");
        csv_num(f, r->p99, "%.3f");
        csv_num(f, r->p999, "%.3f");
        csv_num(f, r->max, "%.3f");
        csv_num(f, r->ops, "%.1f");
        csv_num(f, r->value, "%.6g");
        fprintf(f, ",%s,%s", r->unit, r->baseline);
        csv_num(f, r->ratio_p50, "%.4f");
        csv_num(f, r->ratio_p99, "%.4f");
        csv_num(f, r->ratio_ops, "%.4f");
        fprintf(f, ",%u", r->failures);
        csv_num(f, r->other_load, "%.1f");
        csv_num(f, r->server_us, "%.2f");
        fprintf(f, ",\"%s\"\n", r->note);
    }
    return fclose(f) == 0 ? 0 : MS_EIO;
}


void bench_cdf_add(bench_table_t *t, const char *name, const bench_samples_t *s)
{
    bench_cdf_t *c;

    if (t->ncdf >= BENCH_CDF_MAX || s->n == 0)
        return;
    c = &t->cdf[t->ncdf++];
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->count = s->n;
    for (int i = 0; i <= BENCH_CDF_POINTS; i++)
        c->us[i] = bench_samples_us(s, (double)i / BENCH_CDF_POINTS);
}


int bench_cdf_csv(const bench_table_t *t, const char *path)
{
    FILE *f = fopen(path, "w");

    if (f == NULL)
        return MS_EIO;
    fprintf(f, "series,quantile,latency_us\n");
    for (size_t i = 0; i < t->ncdf; i++) {
        for (int k = 0; k <= BENCH_CDF_POINTS; k++)
            fprintf(f, "%s,%.4f,%.3f\n", t->cdf[i].name,
                    (double)k / BENCH_CDF_POINTS, t->cdf[i].us[k]);
    }
    return fclose(f) == 0 ? 0 : MS_EIO;
}
