/* stem_224's weight gradient (conv_plan "weight_stem_wino", csrc/stem_wgrad.h) slab by slab on
 * one thread, split into its sections: a copy of ck_stem_wgrad_avx2 with TSC timers, scaled to
 * the thread's CPU time of the whole pass (best of 15; synthetic x and grad_y; no fold).
 *   gcc -O3 -Iconvkit/cpu/csrc -o /tmp/wgrad_parts bench/stem_wgrad_parts.c && /tmp/wgrad_parts 8 [PF]
 * argument 1: the batch; 2: 1 (default) the next panel's grad_y (and in the last panel the next
 * slab's first) prefetched into L1 as the kernel does, 2 the same into L2 (_MM_HINT_T1, the
 * kernel before the eleventh session), 0 none.  ROWS=1 in the environment: grad_y's filter
 * transform row by row (the kernel before the eleventh session; now one run per slab and filter). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "stem_wgrad.h"
static double cpu(){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+1e-9*t.tv_nsec;}
/* sections by the thread CPU clock too (a TSC count takes in the other processes' time slices
 * on a loaded machine); its reads (a system call, ~0.5 us) are counted and their cost taken off */
static long reads; static double now(){++reads; return cpu();}
#define NSEC 5
double T[NSEC]; long Nn[NSEC]; static int by_rows;
CK_ST_TARGET static void slab(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                            const ptrdiff_t *boff, const float *x, ptrdiff_t H,
                                            ptrdiff_t W, ptrdiff_t pt, ptrdiff_t pl,
                                            ptrdiff_t h0, ptrdiff_t Ra, ptrdiff_t hr,
                                            ptrdiff_t Wo, const float *gy, ptrdiff_t ldg,
                                            float *ws, float *part, int with_bias, int pf)
{
    double t0 = now();
    const ptrdiff_t nt = (Wo + 3) / 4, W8 = nt + 1, L = hr * nt;
    const ptrdiff_t rows = hr + (KH - 1) / sh;
    const ptrdiff_t rp = ck_sw_rplane(Ra, W8), vb = ck_sw_vblock(Ra, nt);
    const ptrdiff_t vblk = C * sh * 2 * vb, CK = C * KH, Kt = ck_stem_wgrad_taps(C, KH);
    float *R = ws, *buf = R + C * sh * 8 * rp, *V = buf + 64 * ((nt + 8) / 8);
    float *G = V + 7 * vblk;
    const ptrdiff_t gk = 4 * L + 8;
    ck_sw_phases(x, C, H, W, sh, pt, pl, h0, Ra, W8, R, buf);
    double t1 = now(); T[0] += t1 - t0, ++Nn[0];
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t ph = 0; ph < sh; ++ph)
            for (ptrdiff_t a = 0; a < rows; ++a)
                ck_sw_input_row(R + (c * sh + ph) * 8 * rp + a * W8, rp, nt,
                                V + (c * sh + ph) * 2 * vb + a * nt, vblk, vb);
    double t2 = now(); T[1] += t2 - t1, ++Nn[1];
    const ptrdiff_t run = (hr * Wo * 4 + 63) / 64, lines = 4 * run, tiles = Kt / 3;
    for (ptrdiff_t p = 0; p < F; p += 4) {
        double a0 = now();
        for (ptrdiff_t i = 0; i < 4; ++i)
            if (4 * nt == Wo && !by_rows)
                ck_sww_dy_row(gy + (p + i) * ldg, hr * Wo, L, G + i * L, gk);
            else
                for (ptrdiff_t r = 0; r < hr; ++r)
                    ck_sww_dy_row(gy + (p + i) * ldg + r * Wo, Wo, nt, G + i * L + r * nt, gk);
        double a1 = now(); T[2] += a1 - a0, ++Nn[2];
        float *pp = part + p * Kt;
        const float *gnext = (h0 + 2 * hr) * Wo <= ldg ? gy + hr * Wo : NULL;
        const char *next = !pf ? NULL : (const char *)(p + 4 < F ? gy + (p + 4) * ldg : gnext);
        ptrdiff_t base = 0, rem = 0, fi = 0, li = 0;
        for (int k = 0; k < CK_SW_PTS; ++k) {
            const ptrdiff_t nk = ck_sww_ptaps(k, CK);
            for (ptrdiff_t j = 0; j < nk; j += 3) {
                if (next)
                    for (rem += lines; rem >= tiles; rem -= tiles) {
                        if (pf == 2)
                            _mm_prefetch(next + fi * ldg * 4 + li * 64, _MM_HINT_T1);
                        else
                            _mm_prefetch(next + fi * ldg * 4 + li * 64, _MM_HINT_T0);
                        if (++li == run)
                            li = 0, ++fi;
                    }
                ck_sww_tile(L, G + k * gk, V + k * vblk, boff + base + j, pp + 4 * (base + j));
            }
            base += nk;
        }
        double a2 = now(); T[3] += a2 - a1, ++Nn[3];
        if (with_bias)
            ck_sww_sums(L, G + gk, part + F * Kt + p);
        T[4] += now() - a2, ++Nn[4];
    }
}
int main(int argc,char**argv){
  double c0=cpu(); for(int i=0;i<20000;i++) cpu(); const double rc=(cpu()-c0)/20000;
  ptrdiff_t N=atoi(argv[1]),C=3,H=224,W=224,F=64,KH=7,sh=2,Ho=112,Wo=112,hr=8, nt=28, Ra=hr+3;
  int pf = argc > 2 ? atoi(argv[2]) : 1;
  by_rows = getenv("ROWS") != NULL;
  float *x = malloc(sizeof(float)*N*C*H*W), *gy = malloc(sizeof(float)*N*F*Ho*Wo);
  for (long i=0;i<N*C*H*W;i++) x[i] = (float)((i*7919)%1000)/1000.0f-0.5f;
  for (long i=0;i<N*F*Ho*Wo;i++) gy[i] = (float)((i*7907)%1000)/1000.0f-0.5f;
  ptrdiff_t Kt = ck_stem_wgrad_taps(C,KH);
  ptrdiff_t *boff = malloc(sizeof(ptrdiff_t)*Kt); ck_stem_wgrad_offsets(C,KH,sh,Ra,nt,boff);
  float *ws = aligned_alloc(64, 4*((ck_stem_wgrad_floats(C,KH,sh,hr,Wo)+63)/64*64));
  ptrdiff_t pfl = ck_stem_wgrad_part_floats(F,C,KH);
  float *part = calloc(pfl*16, 4);
  double best=1e9, bestc=0; double Tb[5];
  for (int r=0;r<15;r++){
    for(int i=0;i<5;i++)T[i]=0,Nn[i]=0;
    reads=0; double t=cpu();
    int s=0;
    for (ptrdiff_t n=0;n<N;n++) for (ptrdiff_t h0=0; h0<Ho; h0+=hr, s++)
      slab(F,C,KH,sh,boff,x+n*C*H*W,H,W,3,3,h0,Ra,hr,Wo,gy+n*F*Ho*Wo+h0*Wo,Ho*Wo,ws,part+(s*16/(N*14))*pfl,1,pf);
    t=cpu()-t; if(t<best){best=t; for(int i=0;i<5;i++)Tb[i]=T[i]-Nn[i]*rc; bestc=t-reads*rc;}
  }
  printf("total %.2f ms (timer reads taken off): phases %.2f, input %.2f, dy %.2f, products %.2f, sums %.2f\n", bestc*1e3, Tb[0]*1e3,Tb[1]*1e3,Tb[2]*1e3,Tb[3]*1e3,Tb[4]*1e3);
}
