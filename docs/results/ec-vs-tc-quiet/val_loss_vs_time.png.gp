set terminal pngcairo size 900,560 noenhanced
set output 'docs/results/ec-vs-tc-quiet/val_loss_vs_time.png'
set title 'ec-vs-tc-quiet: validation loss vs training time'
set xlabel 'training seconds'
set ylabel 'val ELBO loss'
set grid
set key top right
plot 'docs/results/ec-vs-tc-quiet/val_loss_vs_time.png.dat' index 0 with lines lw 2 title 'ec s1', 'docs/results/ec-vs-tc-quiet/val_loss_vs_time.png.dat' index 1 with lines lw 2 title 'ec s2', 'docs/results/ec-vs-tc-quiet/val_loss_vs_time.png.dat' index 2 with lines lw 2 title 'tc-dropless s1', 'docs/results/ec-vs-tc-quiet/val_loss_vs_time.png.dat' index 3 with lines lw 2 title 'tc-dropless s2'
