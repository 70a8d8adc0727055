set terminal pngcairo size 900,560 noenhanced
set output 'docs/results/retrofit/efficiency_per_bin.png'
set title 'retrofit: eta per mask-ratio bin'
set xlabel 'mask ratio r (bin centre)'
set ylabel 'eta per M tokens'
set grid
set key top right
plot 'docs/results/retrofit/efficiency_per_bin.png.dat' index 0 with lines lw 2 title 'tc-continued', 'docs/results/retrofit/efficiency_per_bin.png.dat' index 1 with lines lw 2 title 'ec-static', 'docs/results/retrofit/efficiency_per_bin.png.dat' index 2 with lines lw 2 title 'ec-linear-reverse', 'docs/results/retrofit/efficiency_per_bin.png.dat' index 3 with lines lw 2 title 'ec-static-router-only'
