set terminal pngcairo size 900,560 noenhanced
set output 'docs/results/dist/ep_model.png'
set title 'Modelled training step time, token choice over expert choice'
set xlabel 'expert-parallel ranks (EP)'
set ylabel 'step time / EC step time'
set grid
set key below
set logscale x
plot 'docs/results/dist/ep_model.png.dat' index 0 using 1:2 with linespoints lw 2 pt 7 ps 1.4 lc 1 title 'TC, dropless over EC, loopback (measured)', 'docs/results/dist/ep_model.png.dat' index 1 using 1:2 with linespoints lw 2 pt 7 ps 1.4 lc 2 title 'TC, capacity over EC, loopback (measured)', 'docs/results/dist/ep_model.png.dat' index 2 using 1:2 with linespoints lw 2 pt 7 ps 1.4 lc 3 title 'TC, dropless over EC, inter-node (assumed 100 Gb/s)', 'docs/results/dist/ep_model.png.dat' index 3 using 1:2 with linespoints lw 2 pt 7 ps 1.4 lc 4 title 'TC, capacity over EC, inter-node (assumed 100 Gb/s)', 'docs/results/dist/ep_model.png.dat' index 4 using 1:2 with lines lw 2 lc 5 title 'paper: EC 2.1x over top-2 TC (time to quality, not step time)', 'docs/results/dist/ep_model.png.dat' index 5 using 1:2 with lines lw 2 lc 6 title 'equal step time'
