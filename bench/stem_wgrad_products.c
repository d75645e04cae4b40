/* weight_stem_wino's products alone (ck_sww_tile, a panel's taps over L = HR*28 tiles, L1 data), GFLOP/s of
 * wall time, best of 15: gcc -O3 -Iconvkit/cpu/csrc -o /tmp/wp bench/stem_wgrad_products.c && /tmp/wp 8 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "stem_wgrad.h"
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
int main(int argc,char**argv){
  ptrdiff_t C=3,KH=7,sh=2,hr=atoi(argv[1]),nt=28,Ra=hr+3,L=hr*nt;
  ptrdiff_t Kt = ck_stem_wgrad_taps(C,KH), vblk=C*sh*2*Ra*nt;
  ptrdiff_t *boff = malloc(sizeof(ptrdiff_t)*Kt); ck_stem_wgrad_offsets(C,KH,sh,Ra,nt,boff);
  float *V = aligned_alloc(64, 4*(7*vblk+64)), *G = aligned_alloc(64, 4*(7*(4*L+8)+64)), *part = calloc(4*Kt+64,4);
  for (long i=0;i<7*vblk;i++) V[i]=0.001f*(i%100); for (long i=0;i<7*(4*L+8);i++) G[i]=0.002f*(i%50);
  double best=1e9; int reps=200; long fmas=0;
  for (int r=0;r<15;r++){ double t=now(); fmas=0;
   for(int q=0;q<reps;q++){ ptrdiff_t base=0; for (int k=0;k<7;k++){ ptrdiff_t nk=ck_sww_ptaps(k,C*KH); for(ptrdiff_t j=0;j<nk;j+=3){ ck_sww_tile(L,G+k*(4*L+8),V+k*vblk,boff+base+j,part+4*(base+j)); fmas+=12*((L+7)/8);} base+=nk;}}
   t=now()-t; if(t<best)best=t;}
  printf("hr=%ld: %.1f GFLOP/s  %.1f us per panel\n", (long)hr, fmas*16.0/best/1e9, best/reps*1e6);
}
