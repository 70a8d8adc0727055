set terminal pngcairo size 900,560 noenhanced
set output '../docs/bench_generate.png'
set title 'MoE time per forward vs unique experts per block (KV cache on; one point per routing policy)'
set xlabel 'unique experts per block (log)'
set ylabel 'MoE ms per forward (log)'
set grid
set key top left
set logscale y
set logscale x
plot '../docs/bench_generate.png.dat' index 0 using 1:2 with points pt 7 ps 1.4 lc 1 title 'brown-tc', '../docs/bench_generate.png.dat' index 0 using 1:4:3 with labels left offset 0.8,0 font ',9' tc lt 1 notitle, '../docs/bench_generate.png.dat' index 1 using 1:2 with lines lw 2 lc 2 title 'brown-tc: block p sweep, G=4', '../docs/bench_generate.png.dat' index 2 using 1:2 with points pt 7 ps 1.4 lc 3 title 'synthetic-llada2', '../docs/bench_generate.png.dat' index 2 using 1:4:3 with labels left offset 0.8,0 font ',9' tc lt 3 notitle, '../docs/bench_generate.png.dat' index 3 using 1:2 with lines lw 2 lc 4 title 'synthetic-llada2: block p sweep, G=16'
