# gnuplot docs/results/ec_vs_tc.gp  (from docs/results; val_*.dat extracted from the two metrics.jsonl)
set terminal pngcairo size 900,560 noenhanced
set output 'ec_vs_tc_val_loss.png'
set title 'Brown, brown-small config, 2 CPU cores: validation ELBO loss vs wall-clock'
set xlabel 'wall-clock (minutes)'
set ylabel 'val loss (nats/token)'
set grid
plot 'val_ec.dat' with linespoints lw 2 title 'EC (k=2, static)', 'val_tc.dat' with linespoints lw 2 title 'TC dropless (top-2, aux 0.01)'
