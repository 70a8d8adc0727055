set terminal pngcairo size 900,560 noenhanced
set output 'docs/results/retrofit/val_loss_vs_tokens.png'
set title 'retrofit: validation loss vs tokens'
set xlabel 'training tokens'
set ylabel 'val ELBO loss'
set grid
set key top right
plot 'docs/results/retrofit/val_loss_vs_tokens.png.dat' index 0 with lines lw 2 title 'tc-continued s1', 'docs/results/retrofit/val_loss_vs_tokens.png.dat' index 1 with lines lw 2 title 'tc-continued s2', 'docs/results/retrofit/val_loss_vs_tokens.png.dat' index 2 with lines lw 2 title 'ec-static s1', 'docs/results/retrofit/val_loss_vs_tokens.png.dat' index 3 with lines lw 2 title 'ec-static s2', 'docs/results/retrofit/val_loss_vs_tokens.png.dat' index 4 with lines lw 2 title 'ec-linear-reverse s1', 'docs/results/retrofit/val_loss_vs_tokens.png.dat' index 5 with lines lw 2 title 'ec-linear-reverse s2', 'docs/results/retrofit/val_loss_vs_tokens.png.dat' index 6 with lines lw 2 title 'ec-static-router-only s1', 'docs/results/retrofit/val_loss_vs_tokens.png.dat' index 7 with lines lw 2 title 'ec-static-router-only s2'
