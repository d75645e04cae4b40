/* stem_224's forward (conv_plan "stem_wino", csrc/stem_wino.h) task by task on one thread, split
 * into its sections: a copy of ck_stem_wino_avx2 with TSC timers, scaled to the thread's CPU
 * time of the whole pass (best of 15 passes; synthetic x and weights).
 *   gcc -O3 -Iconvkit/cpu/csrc -o /tmp/fwd_parts bench/stem_fwd_parts.c && /tmp/fwd_parts 8 [STREAM]
 * argument 1: the batch; 2: 1 (default) y by non-temporal stores, 0 plain stores. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "stem_wino.h"
static double cpu(){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+1e-9*t.tv_nsec;}
/* sections by the thread CPU clock too (a TSC count takes in the other processes' time slices
 * on a loaded machine); its reads (a system call, ~0.5 us) are counted and their cost taken off */
static long reads; static double now(){++reads; return cpu();}
#define NSEC 4
double T[NSEC]; long Nn[NSEC];
CK_ST_TARGET static void task(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                           const float *U, const ptrdiff_t *boff, const float *x,
                                           ptrdiff_t H, ptrdiff_t W, ptrdiff_t pt, ptrdiff_t pl,
                                           ptrdiff_t h0, ptrdiff_t Ra, ptrdiff_t hr, ptrdiff_t Wo,
                                           float *ws, float *y, ptrdiff_t ldy, const float *bias, int stream)
{
    double t0 = now();
    const ptrdiff_t nt = (Wo + 3) / 4, W8 = nt + 1, L = hr * nt;
    const ptrdiff_t rows = hr + (KH - 1) / sh;
    const ptrdiff_t rp = ck_sw_rplane(Ra, W8), vb = ck_sw_vblock(Ra, nt);
    const ptrdiff_t vblk = C * sh * 2 * vb, CK = C * KH;
    float *R = ws, *buf = R + C * sh * 8 * rp, *V = buf + 64 * ((nt + 8) / 8);
    float *M = V + 7 * vblk;
    ck_sw_phases(x, C, H, W, sh, pt, pl, h0, Ra, W8, R, buf);
    double t1 = now(); T[0] += t1 - t0, ++Nn[0];
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t ph = 0; ph < sh; ++ph)
            for (ptrdiff_t a = 0; a < rows; ++a)
                ck_sw_input_row(R + (c * sh + ph) * 8 * rp + a * W8, rp, nt,
                                V + (c * sh + ph) * 2 * vb + a * nt, vblk, vb);
    double t2 = now(); T[1] += t2 - t1, ++Nn[1];
    for (ptrdiff_t p = 0; p < F; p += 4) {
        double a0 = now();
        const float *up = U + p * 13 * CK;
        ptrdiff_t base = 0;
        for (int k = 0; k < CK_SW_PTS; ++k) {
            const ptrdiff_t K = ck_sw_taps(k) * CK;
            ck_stem_forward_avx2(4, K, up + 4 * base, V + k * vblk, boff + base, L, 1, L,
                                 M + k * 4 * L, L, NULL);
            base += K;
        }
        double a1 = now(); T[2] += a1 - a0, ++Nn[2];
        for (ptrdiff_t i = 0; i < 4; ++i) {
            const float b = bias ? bias[p + i] : 0.0f;
                ck_sw_output_row(M + i * L, 4 * L, L, 4 * L, y + (p + i) * ldy, b, stream);
        }
        T[3] += now() - a1, ++Nn[3];
    }
}
int main(int argc,char**argv){
  double c0=cpu(); for(int i=0;i<20000;i++) cpu(); const double rc=(cpu()-c0)/20000;
  int stream = argc > 2 ? atoi(argv[2]) : 1;
  ptrdiff_t N=atoi(argv[1]),C=3,H=224,W=224,F=64,KH=7,sh=2,Ho=112,Wo=112,hr=16, nt=28, Ra=hr+3;
  float *x = malloc(sizeof(float)*N*C*H*W), *w = malloc(sizeof(float)*F*C*49), *y = aligned_alloc(64,sizeof(float)*N*F*Ho*Wo);
  for (long i=0;i<N*C*H*W;i++) x[i] = (float)((i*7919)%1000)/1000.0f-0.5f;
  for (long i=0;i<F*C*49;i++) w[i] = (float)((i*31)%100)/100.0f-0.5f;
  float *U = malloc(sizeof(float)*F*13*C*KH); ck_stem_wino_filters(F,C,KH,w,U);
  ptrdiff_t *boff = malloc(sizeof(ptrdiff_t)*13*C*KH); ck_stem_wino_offsets(C,KH,sh,Ra,nt,boff);
  float *ws = aligned_alloc(64, 4*((ck_stem_wino_floats(C,KH,sh,hr,Wo)+63)/64*64));
  float bias[64]={0};
  double best=1e9, bestc=0; double Tb[4];
  for (int r=0;r<15;r++){
    for(int i=0;i<4;i++)T[i]=0,Nn[i]=0;
    reads=0; double t=cpu();
    for (ptrdiff_t n=0;n<N;n++) for (ptrdiff_t h0=0; h0<Ho; h0+=hr)
      task(F,C,KH,sh,U,boff,x+n*C*H*W,H,W,3,3,h0,Ra,hr,Wo,ws,y+n*F*Ho*Wo+h0*Wo,Ho*Wo,bias,stream);
    t=cpu()-t; if(t<best){best=t; for(int i=0;i<4;i++)Tb[i]=T[i]-Nn[i]*rc; bestc=t-reads*rc;}
  }
  printf("total %.2f ms (timer reads taken off): phases %.2f, input %.2f, products %.2f, output %.2f\n", bestc*1e3, Tb[0]*1e3,Tb[1]*1e3,Tb[2]*1e3,Tb[3]*1e3);
}
