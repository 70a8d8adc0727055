set terminal pngcairo size 900,560 noenhanced
set output 'docs/results/schedules/load_balance.png'
set title 'schedules: tokens-per-expert CV'
set xlabel 'training tokens'
set ylabel 'load CV'
set grid
set key top right
plot 'docs/results/schedules/load_balance.png.dat' index 0 with lines lw 2 title 'static s1', 'docs/results/schedules/load_balance.png.dat' index 1 with lines lw 2 title 'static s2', 'docs/results/schedules/load_balance.png.dat' index 2 with lines lw 2 title 'linear s1', 'docs/results/schedules/load_balance.png.dat' index 3 with lines lw 2 title 'linear s2', 'docs/results/schedules/load_balance.png.dat' index 4 with lines lw 2 title 'linear-reverse s1', 'docs/results/schedules/load_balance.png.dat' index 5 with lines lw 2 title 'linear-reverse s2', 'docs/results/schedules/load_balance.png.dat' index 6 with lines lw 2 title 'cosine s1', 'docs/results/schedules/load_balance.png.dat' index 7 with lines lw 2 title 'cosine s2', 'docs/results/schedules/load_balance.png.dat' index 8 with lines lw 2 title 'cosine-reverse s1', 'docs/results/schedules/load_balance.png.dat' index 9 with lines lw 2 title 'cosine-reverse s2', 'docs/results/schedules/load_balance.png.dat' index 10 with lines lw 2 title 'gaussian s1', 'docs/results/schedules/load_balance.png.dat' index 11 with lines lw 2 title 'gaussian s2', 'docs/results/schedules/load_balance.png.dat' index 12 with lines lw 2 title 'gaussian-reverse s1', 'docs/results/schedules/load_balance.png.dat' index 13 with lines lw 2 title 'gaussian-reverse s2'
