set terminal pngcairo size 900,560 noenhanced
set output 'docs/bench_generate.png'
set title 'MoE time per forward vs unique experts per block (each routing policy)'
set xlabel 'unique experts per block'
set ylabel 'MoE ms per forward'
set grid
set key top right
plot 'docs/bench_generate.png.dat' index 0 with lines lw 2 title 'brown-tc (x: unique experts/block, y: MoE ms/forward)', 'docs/bench_generate.png.dat' index 1 with lines lw 2 title 'synthetic-llada2 (x: unique experts/block, y: MoE ms/forward)'
