/* stem_wino's forward products alone (ck_stem_forward_avx2: 4 filters, K = 42 taps, L = 448 columns,
 * L1 data), GFLOP/s of thread CPU time, best of 15: gcc -O3 -Iconvkit/cpu/csrc -o /tmp/p bench/stem_products.c && /tmp/p */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "stem.h"
static double now(){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+1e-9*t.tv_nsec;}
int main(int argc, char **argv){
  ptrdiff_t K = 42, L = 448, Ra = 19, nt = 28;
  float *U = aligned_alloc(64, 4*K*4*sizeof(float)); 
  float *V = aligned_alloc(64, 7000*4*sizeof(float));
  float *M = aligned_alloc(64, 4*L*sizeof(float));
  ptrdiff_t boff[64];
  for (int i=0;i<K;i++) boff[i] = (i/2) % 6 * 2 * Ra * nt + (i%2)*Ra*nt /*block*/ + (i/12)*nt;
  for (int i=0;i<4*K;i++) U[i]=0.01f*i;
  for (int i=0;i<7000;i++) V[i]=0.001f*i;
  double best=1e9; int reps=2000;
  for(int r=0;r<15;r++){ double t=now(); for(int q=0;q<reps;q++) ck_stem_forward_avx2(4,K,U,V,boff,L,1,L,M,L,NULL); t=now()-t; if(t<best)best=t;}
  double fl = 2.0*4*K*L*reps;
  printf("products: %.1f GFLOP/s (%.3f us per call) %g\n", fl/best/1e9, best/reps*1e6, M[5]);
}
