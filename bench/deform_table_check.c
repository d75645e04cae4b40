/* ck_deform_table_f_avx2v (eight positions a vector) against the scalar AVX2 build of the
   table, bit for bit, on random shapes, strides, paddings, dilations and position ranges, with
   integer and half-integer offsets (points exactly on -1 and on the edges), NaN and +-inf:

     gcc -O3 -Iconvkit/cpu/csrc -o /tmp/tabcheck bench/deform_table_check.c -lm && /tmp/tabcheck
*/
#include "deform_conv.h"
#include <stdio.h>
#include <stdlib.h>
int main(){
  int bad=0;
  for (int trial=0; trial<200; trial++){
    ptrdiff_t H=1+rand()%9, W=1+rand()%9, KH=1+rand()%3, KW=1+rand()%3, OG=1+rand()%2, sh=1+rand()%2, sw=1+rand()%2, ph=rand()%3, pw=rand()%3, dh=1+rand()%2, dw=1+rand()%2;
    ptrdiff_t Ho=(H+2*ph-dh*(KH-1)-1)/sh+1, Wo=(W+2*pw-dw*(KW-1)-1)/sw+1; if(Ho<1||Wo<1) continue;
    ptrdiff_t P=Ho*Wo, RK=OG*KH*KW; float* off=malloc(4*2*RK*P);
    for (ptrdiff_t q=0;q<2*RK*P;q++){ int k=rand()%10; float v=(rand()/(float)RAND_MAX-0.5f)*8;
      off[q]= k==0? (float)(rand()%7-3) : k==1? NAN : k==2? -INFINITY : k==3 ? INFINITY: k==4 ? (float)(rand()%5) - 0.5f : v; }
    /* exact -1 sample points: make some offsets so y == -1 */
    ptrdiff_t p0 = rand()%P, p1 = p0 + 1 + rand()%(P-p0), ldt=p1-p0+3;
    float *t1=calloc(6*RK*ldt,4),*t2=calloc(6*RK*ldt,4); ptrdiff_t *b1=calloc(RK*ldt,8),*b2=calloc(RK*ldt,8),*c1=calloc(RK*ldt,8),*c2=calloc(RK*ldt,8);
    ck_deform_table_f_avx2(off,OG,KH,KW,Wo,P,H,W,sh,sw,ph,pw,dh,dw,p0,p1,t1,b1,c1,ldt);
    ck_deform_table_f_avx2v(off,OG,KH,KW,Wo,P,H,W,sh,sw,ph,pw,dh,dw,p0,p1,t2,b2,c2,ldt);
    if (memcmp(t1,t2,4*6*RK*ldt)||memcmp(b1,b2,8*RK*ldt)||memcmp(c1,c2,8*RK*ldt)) bad++;
  }
  printf("mismatches %d\n", bad);
}
