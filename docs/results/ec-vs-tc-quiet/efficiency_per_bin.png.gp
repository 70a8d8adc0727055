set terminal pngcairo size 900,560 noenhanced
set output 'docs/results/ec-vs-tc-quiet/efficiency_per_bin.png'
set title 'ec-vs-tc-quiet: eta per mask-ratio bin'
set xlabel 'mask ratio r (bin centre)'
set ylabel 'eta per M tokens'
set grid
set key top right
plot 'docs/results/ec-vs-tc-quiet/efficiency_per_bin.png.dat' index 0 with lines lw 2 title 'ec', 'docs/results/ec-vs-tc-quiet/efficiency_per_bin.png.dat' index 1 with lines lw 2 title 'tc-dropless'
