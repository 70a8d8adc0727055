set terminal pngcairo size 900,560 noenhanced
set output 'docs/results/schedules/efficiency_per_bin.png'
set title 'schedules: eta per mask-ratio bin'
set xlabel 'mask ratio r (bin centre)'
set ylabel 'eta per M tokens'
set grid
set key top right
plot 'docs/results/schedules/efficiency_per_bin.png.dat' index 0 with lines lw 2 title 'static', 'docs/results/schedules/efficiency_per_bin.png.dat' index 1 with lines lw 2 title 'linear', 'docs/results/schedules/efficiency_per_bin.png.dat' index 2 with lines lw 2 title 'linear-reverse', 'docs/results/schedules/efficiency_per_bin.png.dat' index 3 with lines lw 2 title 'cosine', 'docs/results/schedules/efficiency_per_bin.png.dat' index 4 with lines lw 2 title 'cosine-reverse', 'docs/results/schedules/efficiency_per_bin.png.dat' index 5 with lines lw 2 title 'gaussian', 'docs/results/schedules/efficiency_per_bin.png.dat' index 6 with lines lw 2 title 'gaussian-reverse'
