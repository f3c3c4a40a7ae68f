# cdf.gp - draws meshsync-bench's latency CDFs (cdf.csv: series,
# quantile, latency_us) as a PNG with a logarithmic latency axis.
# Usage: gnuplot -e "datafile='cdf.csv'; outfile='latency-cdf.png'" cdf.gp

set datafile separator ","
set terminal png size 1200,750 noenhanced
set output outfile
set title "meshsync-bench: latency CDF (same run)"
set xlabel "latency (microseconds, log scale)"
set ylabel "fraction of requests at or below"
set logscale x
set yrange [0:1]
set grid xtics mxtics ytics
set key bottom right

series = "echo hget_unix hget_json ms_get_hit evalsha ms_replace"
plot for [s in series] datafile \
     using (strcol(1) eq s ? $3 : NaN):(strcol(1) eq s ? $2 : NaN) \
     with lines linewidth 2 title s
