# cython: language_level=3
"""Declarations of the C kernels in csrc/ that the conv modules call (private: not for cimport
by users; the public plane kernels are in _conv.pxd).  One header per kernel family:

    csrc/sgemm.h   the own float32 AVX-512 GEMM (declared in _blas.pxd)
    csrc/vsum.h    float32 sums, short row copies, im2col tap rows, stride-phase planes (AVX-512)
    csrc/scan8.h   plane_sum's loop on AVX2 (the same results)
    csrc/sdot.h    the dot-product weight gradient's tile loop (AVX-512)
    csrc/wino.h    Winograd F(2x2, 3x3) transforms, 16 tiles / filters per step (AVX-512)
    csrc/wino4.h   Winograd F(4x4, 3x3) row transforms (portable C; AVX2 build by CPUID)
    csrc/dwconv.h  depthwise stride-1 register blocks (GCC/clang vector extensions)
    csrc/dw3x3.h   depthwise 3x3 stride-1 kernels (16-byte / AVX2 / AVX-512, picked by CPUID)
    csrc/shift.h   masked shifted copies for the small-map im2col (AVX-512, AVX2)
    csrc/rowgemm.h a float32 GEMM reading B rows at offsets, for the sub-pixel grad_x (AVX2)
    csrc/stem.h    the strided first-layer conv's forward and weight gradient (AVX2)
    csrc/stem_wino.h  the stem's forward by a 1-D Winograd F(4, 4) / F(4, 3) along rows (AVX2)
    csrc/stem_wgrad.h the stem's weight gradient by the transposed F(4, 4) / F(3, 4) (AVX2)
    csrc/winotiny.h Winograd F(2x2, 3x3) transforms on tiny maps, 8 images a vector (AVX2)
    csrc/polywino.h Winograd F(4x4, 2x2) over the phase planes of stride-2 4x4 convs (AVX2)
    csrc/smallk.h  a fixed-order A^T B with a short sum (pointwise grad_x, few filters; AVX2)

The AVX-512 bodies are compiled with target attributes and picked at run time, so every build
carries them and a CPU without AVX-512 takes the portable paths.
"""

cdef extern from "csrc/vsum.h" nogil:
    int ck_sum_f(const float* p, Py_ssize_t n, double* out)
    int ck_short_copy_f(float* dst, const float* src, Py_ssize_t n)
    int ck_im2col_taps_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                         Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Wo,
                         Py_ssize_t h0, Py_ssize_t nrows, float* cols, Py_ssize_t ldc,
                         float* xs)
    void ck_phases_f(const float* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t sh,
                     Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t h0, Py_ssize_t Rq,
                     Py_ssize_t Wq, Py_ssize_t plane, float* Q)


cdef extern from "csrc/smallk.h" nogil:
    int ck_smallk_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* a,
                    Py_ssize_t lda,
                      const double* b, Py_ssize_t ldb, double* c, Py_ssize_t ldc)
    int ck_smallk_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a,
                    Py_ssize_t lda,
                      const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc)


cdef extern from "csrc/scan8.h" nogil:
    int ck_sum8_f(const float* p, Py_ssize_t n, double* out)


cdef extern from "csrc/sdot.h" nogil:
    void ck_sdot_accum(Py_ssize_t m, Py_ssize_t n, Py_ssize_t R, Py_ssize_t wn, const float* a,
                       Py_ssize_t lda, Py_ssize_t ars, const float* b, const Py_ssize_t* boff,
                       Py_ssize_t brs, float* part, const float* pf, Py_ssize_t pf_rows,
                       Py_ssize_t pf_len, Py_ssize_t pf_ld)
    void ck_sdot_copy(Py_ssize_t m, Py_ssize_t R, Py_ssize_t wn, const float* a, Py_ssize_t lda,
                      Py_ssize_t ars, float* dst, Py_ssize_t ds, float* sums)


cdef extern from "csrc/wino.h" nogil:
    int ck_wino_input_row_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                            Py_ssize_t pl, Py_ssize_t tw, float* v, Py_ssize_t vs,
                            float* scratch)
    int ck_wino_output_row_f(const float* m, Py_ssize_t ms, Py_ssize_t tw, float bias, float* y,
                             Py_ssize_t Wo, int two_rows)
    int ck_wino_filters_f(const float* g, Py_ssize_t ls, Py_ssize_t nl, int flip, float* u,
                          Py_ssize_t us)


cdef extern from "csrc/wino4.h" nogil:
    void ck_w4_input_rows_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                            Py_ssize_t nt, Py_ssize_t pl, Py_ssize_t tw, float* v, float* vlast,
                            Py_ssize_t vs, float* scratch)
    void ck_w4_input_rows_d(const double* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                            Py_ssize_t nt, Py_ssize_t pl, Py_ssize_t tw, double* v,
                            double* vlast, Py_ssize_t vs, double* scratch)
    void ck_w4_input_mix_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                           Py_ssize_t nt, Py_ssize_t pl, Py_ssize_t tw, int c2, int l2,
                           float* vm, float* ve, float* vml, float* vel, float* vend,
                           float* vlend, Py_ssize_t vs, float* scratch)
    void ck_w4_output_block_f(const float* m, Py_ssize_t ms, Py_ssize_t n, int a2, int b2,
                              float bias, float* S, float* Yp)
    void ck_w4_store_mix_f(const float* Yp, Py_ssize_t n, Py_ssize_t tm, const float* Ye,
                           Py_ssize_t ne, int c2, float* y, Py_ssize_t Wo, Py_ssize_t rows,
                           float* buf)
    void ck_w4_output_tiles_f(const float* m, Py_ssize_t ms, Py_ssize_t n, float bias,
                              float* S, float* Yp)
    void ck_w4_output_tiles_d(const double* m, Py_ssize_t ms, Py_ssize_t n, double bias,
                              double* S, double* Yp)
    void ck_w4_store_row_f(const float* Yp, Py_ssize_t n, Py_ssize_t tw, float* y, Py_ssize_t Wo,
                           Py_ssize_t rows, float* buf)
    void ck_w4_store_row_d(const double* Yp, Py_ssize_t n, Py_ssize_t tw, double* y,
                           Py_ssize_t Wo, Py_ssize_t rows, double* buf)
    void ck_w4_filters_f(const float* g, Py_ssize_t ls, Py_ssize_t nl, int flip, float* u,
                         Py_ssize_t us)
    void ck_w4_filters_d(const double* g, Py_ssize_t ls, Py_ssize_t nl, int flip, double* u,
                         Py_ssize_t us)
    void ck_w4_filters_pk_f(const float* g, Py_ssize_t fs, Py_ssize_t cs, Py_ssize_t nf,
                            Py_ssize_t nc, int flip, float* u, Py_ssize_t us)
    int ck_w4_gemm_pk(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* apk,
                       const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc)
    Py_ssize_t ck_w4_pk_rows(Py_ssize_t m)
    int ck_fgemm_available()
    void ck_w4_grad_row_f(const float* gy, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t r0,
                          Py_ssize_t tw, float* z, Py_ssize_t zs, float* scratch)
    void ck_w4_grad_row_d(const double* gy, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t r0,
                          Py_ssize_t tw, double* z, Py_ssize_t zs, double* scratch)
    void ck_w4_wgrad_out_f(const float* m, Py_ssize_t ms, Py_ssize_t np, Py_ssize_t ps,
                           Py_ssize_t n, float* gw)
    void ck_w4_wgrad_out_d(const double* m, Py_ssize_t ms, Py_ssize_t np, Py_ssize_t ps,
                           Py_ssize_t n, double* gw)
    Py_ssize_t ck_w4_grad_scratch(Py_ssize_t tw)
    int ck_w4_set_avx2(int allow)
    Py_ssize_t ck_w4_input_scratch(Py_ssize_t tw)
    Py_ssize_t ck_w4_output_scratch(Py_ssize_t n, Py_ssize_t tw)


cdef extern from "csrc/dwconv.h" nogil:
    void ck_block16_f(const float* xp, Py_ssize_t Wp, const float* w, Py_ssize_t KH,
                      Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, float* y, float init,
                      int accumulate)
    void ck_block16_d(const double* xp, Py_ssize_t Wp, const double* w, Py_ssize_t KH,
                      Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, double* y, double init,
                      int accumulate)
    void ck_dot16_f(const float* a, const float* b, Py_ssize_t n, float* out)
    void ck_dot16_d(const double* a, const double* b, Py_ssize_t n, double* out)
    void ck_block8_f(const float* xp, Py_ssize_t Wp, const float* w, Py_ssize_t KH,
                     Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, float* y, float init,
                     int accumulate)
    void ck_block8_d(const double* xp, Py_ssize_t Wp, const double* w, Py_ssize_t KH,
                     Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, double* y, double init,
                     int accumulate)
    void ck_dot8_f(const float* a, const float* b, Py_ssize_t n, float* out)
    void ck_dot8_d(const double* a, const double* b, Py_ssize_t n, double* out)


cdef extern from "csrc/dw3x3.h" nogil:
    int ck_dw3_level(int itemsize, Py_ssize_t n)
    int ck_dw3_set_cap(int cap)
    void ck_dw3_fwd_f(int lvl, const float* xp, Py_ssize_t Wp, const float* w, int flip,
                      float bias, float* y, Py_ssize_t Ho, Py_ssize_t Wo)
    void ck_dw3_fwd_d(int lvl, const double* xp, Py_ssize_t Wp, const double* w, int flip,
                      double bias, double* y, Py_ssize_t Ho, Py_ssize_t Wo)
    void ck_dw3_wgrad_f(int lvl, const float* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                        const float* xp, Py_ssize_t Wp, double* out)
    void ck_dw3_wgrad_d(int lvl, const double* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                        const double* xp, Py_ssize_t Wp, double* out)
    void ck_dw3_fwd1_f(int lvl, const float* x, const float* w, int flip, float bias,
                       float* y, Py_ssize_t H, Py_ssize_t W)
    void ck_dw3_fwd1_d(int lvl, const double* x, const double* w, int flip, double bias,
                       double* y, Py_ssize_t H, Py_ssize_t W)
    void ck_dw3_wgrad1_f(int lvl, const float* gy, const float* x, Py_ssize_t H, Py_ssize_t W,
                         double* out)
    void ck_dw3_wgrad1_d(int lvl, const double* gy, const double* x, Py_ssize_t H,
                         Py_ssize_t W, double* out)


cdef extern from "csrc/shift.h" nogil:
    void ck_shift_f(const float* x, Py_ssize_t img, Py_ssize_t nb, Py_ssize_t off,
                    const unsigned short* masks, Py_ssize_t nv, float* dst)
    void ck_shift_d(const double* x, Py_ssize_t img, Py_ssize_t nb, Py_ssize_t off,
                    const unsigned short* masks, Py_ssize_t nv, double* dst)
    int ck_shift_available()


cdef extern from "csrc/rowgemm.h" nogil:
    int ck_rowgemm_available()
    int ck_rowgemm_f(Py_ssize_t P, Py_ssize_t L, Py_ssize_t K, const float* wt, const float* b,
                     const Py_ssize_t* boff, float* out, Py_ssize_t ldo)
    int ck_rowgemm_shift_f(Py_ssize_t P, Py_ssize_t L, Py_ssize_t K, const float* wt,
                           const float* b, const Py_ssize_t* boff, const Py_ssize_t* pbase,
                           float* out, Py_ssize_t ldo, Py_ssize_t kc)
    int ck_rowgemm_kc_f(Py_ssize_t P, Py_ssize_t L, Py_ssize_t K, const float* wt,
                        const float* b, const Py_ssize_t* boff, float* out, Py_ssize_t ldo,
                        Py_ssize_t kc)
    int ck_rowgemm_pass_f(Py_ssize_t P, Py_ssize_t L, Py_ssize_t K, Py_ssize_t k0,
                          Py_ssize_t kc, const float* wt, const float* b, const Py_ssize_t* boff,
                          float* out, Py_ssize_t ldo)
    int ck_rowgemm_pass_acc_f(Py_ssize_t P, Py_ssize_t L, Py_ssize_t K, Py_ssize_t k0,
                              Py_ssize_t kc, int acc, const float* wt, const float* b,
                              const Py_ssize_t* boff, float* out, Py_ssize_t ldo)
    void ck_rg_interleave2(float* dst, const float* s0, const float* s1, Py_ssize_t n0,
                           Py_ssize_t n1, int has_bias, float bias)
    void ck_rg_pad_rows(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                        Py_ssize_t nr, Py_ssize_t c0, Py_ssize_t Wp, float* dst)
    void ck_rg_to_cl(const float* x, Py_ssize_t ldx, Py_ssize_t C, Py_ssize_t W, float* dst)
    void ck_rg_panel4(const float* s, Py_ssize_t lds, Py_ssize_t n, float* dst)


cdef extern from "csrc/stem.h" nogil:
    int ck_stem_forward_f(Py_ssize_t F, Py_ssize_t K, const float* wt, const float* Q,
                          const Py_ssize_t* boff, Py_ssize_t Wq, Py_ssize_t hr, Py_ssize_t Wo,
                          float* y, Py_ssize_t ldy, const float* bias)
    int ck_stem_wdot_f(Py_ssize_t F, Py_ssize_t K3, Py_ssize_t hr, Py_ssize_t Wo,
                       const float* gy, Py_ssize_t ldg, const float* Q, Py_ssize_t Wq,
                       const Py_ssize_t* boff, float* part, Py_ssize_t ldp, int with_bias)


cdef extern from "csrc/stem_wino.h" nogil:
    void ck_stem_wino_filters(Py_ssize_t F, Py_ssize_t C, Py_ssize_t KH, const float* w,
                              float* U)
    void ck_stem_wino_offsets(Py_ssize_t C, Py_ssize_t KH, Py_ssize_t sh, Py_ssize_t Ra,
                              Py_ssize_t nt, Py_ssize_t* boff)
    Py_ssize_t ck_stem_wino_floats(Py_ssize_t C, Py_ssize_t KH, Py_ssize_t sh, Py_ssize_t rows,
                                   Py_ssize_t Wo)
    int ck_stem_wino_forward_f(Py_ssize_t F, Py_ssize_t C, Py_ssize_t KH, Py_ssize_t sh,
                               const float* U, const Py_ssize_t* boff, const float* x,
                               Py_ssize_t H, Py_ssize_t W, Py_ssize_t pt, Py_ssize_t pl,
                               Py_ssize_t h0, Py_ssize_t Ra, Py_ssize_t hr, Py_ssize_t Wo,
                               float* ws, float* y, Py_ssize_t ldy, const float* bias,
                               int stream)


cdef extern from "csrc/stem_wgrad.h" nogil:
    Py_ssize_t ck_stem_wgrad_taps(Py_ssize_t C, Py_ssize_t KH)
    Py_ssize_t ck_stem_wgrad_part_floats(Py_ssize_t F, Py_ssize_t C, Py_ssize_t KH)
    Py_ssize_t ck_stem_wgrad_floats(Py_ssize_t C, Py_ssize_t KH, Py_ssize_t sh, Py_ssize_t rows,
                                    Py_ssize_t Wo)
    void ck_stem_wgrad_offsets(Py_ssize_t C, Py_ssize_t KH, Py_ssize_t sh, Py_ssize_t Ra,
                               Py_ssize_t nt, Py_ssize_t* boff)
    int ck_stem_wgrad_slab_f(Py_ssize_t F, Py_ssize_t C, Py_ssize_t KH, Py_ssize_t sh,
                             const Py_ssize_t* boff, const float* x, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t h0, Py_ssize_t Ra,
                             Py_ssize_t hr, Py_ssize_t Wo, const float* gy, Py_ssize_t ldg,
                             float* ws, float* part, int with_bias)
    void ck_stem_wgrad_fold(Py_ssize_t p, Py_ssize_t F, Py_ssize_t C, Py_ssize_t KH,
                            Py_ssize_t groups_n, float* part, Py_ssize_t ldgrp, float* gw,
                            float* gb)

cdef extern from "csrc/winotiny.h" nogil:
    Py_ssize_t ck_wt_scratch(Py_ssize_t H, Py_ssize_t W)
    int ck_wt_available()
    int ck_wt_input_f(const float* x, Py_ssize_t istride, int ng, Py_ssize_t H, Py_ssize_t W,
                      float* v, Py_ssize_t vs, float* s)
    int ck_wt_output_f(const float* m, Py_ssize_t ms, int ng, Py_ssize_t H, Py_ssize_t W,
                       float bias, float* y, Py_ssize_t ostride, float* s)
    int ck_wt_grad_f(const float* gy, Py_ssize_t istride, int ng, Py_ssize_t H, Py_ssize_t W,
                     float* z, Py_ssize_t zs, float* s)
    int ck_wt_wgrad_dot_f(const float* z, Py_ssize_t zs, const float* v, Py_ssize_t vs,
                          Py_ssize_t K, Py_ssize_t F, Py_ssize_t C, float* m, Py_ssize_t ldm,
                          int acc)
    void ck_wt_wgrad_out_f(const float* m, Py_ssize_t es, Py_ssize_t parts, Py_ssize_t ps,
                           Py_ssize_t C, float* gw)

cdef extern from "csrc/polywino.h" nogil:
    Py_ssize_t ck_pw_stage_floats(Py_ssize_t trows, Py_ssize_t tw)
    int ck_pw_available()
    int ck_pw_stage_f(const float* x, Py_ssize_t cstride, int nc, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t r0, Py_ssize_t nr,
                      Py_ssize_t cols, float* s)
    int ck_pw_input_f(const float* s, Py_ssize_t ntr, Py_ssize_t tw, float* v, Py_ssize_t es,
                      Py_ssize_t ts, Py_ssize_t phs, int nph)
    int ck_pw_stage1_f(const float* x, Py_ssize_t cstride, int nc, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t r0, Py_ssize_t nr,
                       Py_ssize_t cols, float* s)
    int ck_pw_output_d2s_f(const float* m, Py_ssize_t qoff, Py_ssize_t es, Py_ssize_t ts,
                           Py_ssize_t ntr, Py_ssize_t tw, int nf, const float* bias, float* y,
                           Py_ssize_t fstride, Py_ssize_t H, Py_ssize_t W, Py_ssize_t u0, int P,
                           Py_ssize_t pt, Py_ssize_t pl, float* ob)
    int ck_pw_grad_input_f(const float* s, Py_ssize_t ntr, Py_ssize_t tw, float* z,
                           Py_ssize_t es, Py_ssize_t ts)
    int ck_pw_output_f(const float* m, Py_ssize_t es, Py_ssize_t ts, Py_ssize_t ntr,
                       Py_ssize_t tw, Py_ssize_t first, Py_ssize_t count, int nf,
                       const float* bias, float* y, Py_ssize_t fstride, Py_ssize_t rows,
                       Py_ssize_t Wo, float* ob)
