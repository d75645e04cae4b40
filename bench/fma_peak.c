/* One core's float32 FMA peak on AVX2 (twelve independent 8-lane FMA chains), for reading the
   GEMM rates of bench/deform_fwd_split.c against: best of 20 runs of 1.2e8 FMAs.
     gcc -O2 -o /tmp/peak bench/fma_peak.c && /tmp/peak
   (two at once on two cores: taskset -c 0 /tmp/peak & taskset -c 1 /tmp/peak & wait) */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
__attribute__((target("avx2,fma"),noinline)) float run(long n, float xv){
  __m256 x=_mm256_set1_ps(xv), y=_mm256_set1_ps(0.999999f);
  __m256 a0=x,a1=y,a2=x,a3=y,a4=x,a5=y,a6=x,a7=y,a8=x,a9=y,a10=x,a11=y;
  for(long k=0;k<n;k++){
   a0=_mm256_fmadd_ps(a0,x,y);a1=_mm256_fmadd_ps(a1,x,y);a2=_mm256_fmadd_ps(a2,x,y);a3=_mm256_fmadd_ps(a3,x,y);
   a4=_mm256_fmadd_ps(a4,x,y);a5=_mm256_fmadd_ps(a5,x,y);a6=_mm256_fmadd_ps(a6,x,y);a7=_mm256_fmadd_ps(a7,x,y);
   a8=_mm256_fmadd_ps(a8,x,y);a9=_mm256_fmadd_ps(a9,x,y);a10=_mm256_fmadd_ps(a10,x,y);a11=_mm256_fmadd_ps(a11,x,y);}
  __m256 s=_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3)),_mm256_add_ps(_mm256_add_ps(a4,a5),_mm256_add_ps(a6,a7)));
  s=_mm256_add_ps(s,_mm256_add_ps(_mm256_add_ps(a8,a9),_mm256_add_ps(a10,a11)));
  return _mm256_cvtss_f32(s);
}
int main(){ double best=1e9; float s=0;
  for(int r=0;r<20;r++){ double t=now(); s+=run(10000000,1.0000001f); t=now()-t; if(t<best)best=t;}
  printf("peak %.1f GFLOP/s (%g)\n", 10000000.0*12*16/best/1e9, s);}
