# cython: language_level=3
"""The C of csrc/roi_variants.h (roi_avg_pool and roi_max_align inner loops)."""
from libc.stdint cimport int32_t, int64_t

cdef extern from "csrc/roi_variants.h":
    void ck_avg_roi_f(const float* img, Py_ssize_t W, Py_ssize_t C, Py_ssize_t ph, Py_ssize_t pw,
                      const Py_ssize_t* hs, const Py_ssize_t* he, const Py_ssize_t* ws,
                      const Py_ssize_t* we, float* acc, float* y) noexcept nogil
    void ck_avg_roi_d(const double* img, Py_ssize_t W, Py_ssize_t C, Py_ssize_t ph,
                      Py_ssize_t pw, const Py_ssize_t* hs, const Py_ssize_t* he,
                      const Py_ssize_t* ws, const Py_ssize_t* we, double* acc,
                      double* y) noexcept nogil
    void ck_avg_bwd_blk_f(float* gb, Py_ssize_t nc, Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw,
                          const Py_ssize_t* hs, const Py_ssize_t* he, const Py_ssize_t* ws,
                          const Py_ssize_t* we, const float* g, Py_ssize_t nb,
                          float* v) noexcept nogil
    void ck_avg_bwd_blk_d(double* gb, Py_ssize_t nc, Py_ssize_t W, Py_ssize_t ph,
                          Py_ssize_t pw, const Py_ssize_t* hs, const Py_ssize_t* he,
                          const Py_ssize_t* ws, const Py_ssize_t* we, const double* g,
                          Py_ssize_t nb, double* v) noexcept nogil
    void ck_max_align_bin_f(const float* img, Py_ssize_t W, Py_ssize_t C, Py_ssize_t a0,
                            Py_ssize_t a1, const Py_ssize_t* ylo, const Py_ssize_t* yhi,
                            const float* ywl, const float* ywh, const Py_ssize_t* yidx,
                            Py_ssize_t b0, Py_ssize_t b1, const Py_ssize_t* xlo,
                            const Py_ssize_t* xhi, const float* xwl, const float* xwh,
                            const Py_ssize_t* xidx, int64_t gw, float* best, int32_t* bi,
                            Py_ssize_t nb, float* y, void* am, int aw) noexcept nogil
    void ck_max_align_bin_fl(const float* img, Py_ssize_t W, Py_ssize_t C, Py_ssize_t a0,
                             Py_ssize_t a1, const Py_ssize_t* ylo, const Py_ssize_t* yhi,
                             const float* ywl, const float* ywh, const Py_ssize_t* yidx,
                             Py_ssize_t b0, Py_ssize_t b1, const Py_ssize_t* xlo,
                             const Py_ssize_t* xhi, const float* xwl, const float* xwh,
                             const Py_ssize_t* xidx, int64_t gw, float* best, int64_t* bi,
                             Py_ssize_t nb, float* y, void* am, int aw,
                             Py_ssize_t cb) noexcept nogil
    void ck_max_align_bin_d(const double* img, Py_ssize_t W, Py_ssize_t C, Py_ssize_t a0,
                            Py_ssize_t a1, const Py_ssize_t* ylo, const Py_ssize_t* yhi,
                            const double* ywl, const double* ywh, const Py_ssize_t* yidx,
                            Py_ssize_t b0, Py_ssize_t b1, const Py_ssize_t* xlo,
                            const Py_ssize_t* xhi, const double* xwl, const double* xwh,
                            const Py_ssize_t* xidx, int64_t gw, double* best, int64_t* bi,
                            Py_ssize_t nb, double* y, void* am, int aw,
                            Py_ssize_t cb) noexcept nogil
    Py_ssize_t ck_max_align_bwd_f(float* plane, Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw,
                                  const Py_ssize_t* yf, const Py_ssize_t* ylo,
                                  const Py_ssize_t* yhi, const float* ywl, const float* ywh,
                                  const Py_ssize_t* yidx, const Py_ssize_t* xf,
                                  const Py_ssize_t* xlo, const Py_ssize_t* xhi,
                                  const float* xwl, const float* xwh, const Py_ssize_t* xidx,
                                  int64_t gw, const float* g, const void* am,
                                  int aw) noexcept nogil
    Py_ssize_t ck_max_align_bwd_d(double* plane, Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw,
                                  const Py_ssize_t* yf, const Py_ssize_t* ylo,
                                  const Py_ssize_t* yhi, const double* ywl, const double* ywh,
                                  const Py_ssize_t* yidx, const Py_ssize_t* xf,
                                  const Py_ssize_t* xlo, const Py_ssize_t* xhi,
                                  const double* xwl, const double* xwh, const Py_ssize_t* xidx,
                                  int64_t gw, const double* g, const void* am,
                                  int aw) noexcept nogil
    Py_ssize_t ck_max_align_bwd_tab_f(float* plane, Py_ssize_t nb, const int64_t* base,
                                      const Py_ssize_t* nx, const Py_ssize_t* pf,
                                      const Py_ssize_t* off, const float* wt, int64_t gw,
                                      const float* g, const void* am, int aw) noexcept nogil
    void ck_max_align_pairs_f(Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw, const Py_ssize_t* yf,
                              const Py_ssize_t* ylo, const Py_ssize_t* yhi, const float* ywl,
                              const float* ywh, const Py_ssize_t* yidx, const Py_ssize_t* xf,
                              const Py_ssize_t* xlo, const Py_ssize_t* xhi, const float* xwl,
                              const float* xwh, const Py_ssize_t* xidx, int64_t gw,
                              int64_t* base, Py_ssize_t* nx, Py_ssize_t* pf, Py_ssize_t* off,
                              float* wt) noexcept nogil
    Py_ssize_t ck_max_align_bwd_tab_d(double* plane, Py_ssize_t nb, const int64_t* base,
                                      const Py_ssize_t* nx, const Py_ssize_t* pf,
                                      const Py_ssize_t* off, const double* wt, int64_t gw,
                                      const double* g, const void* am, int aw) noexcept nogil
    void ck_max_align_pairs_d(Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw, const Py_ssize_t* yf,
                              const Py_ssize_t* ylo, const Py_ssize_t* yhi, const double* ywl,
                              const double* ywh, const Py_ssize_t* yidx, const Py_ssize_t* xf,
                              const Py_ssize_t* xlo, const Py_ssize_t* xhi, const double* xwl,
                              const double* xwh, const Py_ssize_t* xidx, int64_t gw,
                              int64_t* base, Py_ssize_t* nx, Py_ssize_t* pf, Py_ssize_t* off,
                              double* wt) noexcept nogil
    Py_ssize_t ck_max_align_table_f(Py_ssize_t W, Py_ssize_t C, Py_ssize_t ph, Py_ssize_t pw,
                                    const Py_ssize_t* yf, const Py_ssize_t* ylo,
                                    const Py_ssize_t* yhi, const float* ywl, const float* ywh,
                                    const Py_ssize_t* yidx, const Py_ssize_t* xf,
                                    const Py_ssize_t* xlo, const Py_ssize_t* xhi,
                                    const float* xwl, const float* xwh, const Py_ssize_t* xidx,
                                    int64_t gw, Py_ssize_t cap, Py_ssize_t* sf, Py_ssize_t* so,
                                    float* sw, int32_t* rel, int32_t* base) noexcept nogil
    void ck_max_align_roi_f(const float* img, Py_ssize_t C, Py_ssize_t nb, const Py_ssize_t* sf,
                            const Py_ssize_t* so, const float* sw, const int32_t* rel,
                            const int32_t* base, int finite, void* scratch, float* y,
                            void* am, int aw) noexcept nogil
    Py_ssize_t ck_max_align_bwd_blk_f(float* gb, Py_ssize_t cb, Py_ssize_t nb,
                                      const Py_ssize_t* sf, const Py_ssize_t* so,
                                      const float* sw, const int32_t* rel, const int32_t* base,
                                      const float* gyk, const void* amk, int aw,
                                      int32_t* wide, float* gt, int32_t* rt,
                                      const float* gnext, const void* anext,
                                      const Py_ssize_t* gf,
                                      const Py_ssize_t* goff, const float* gwt,
                                      const int32_t* gdm, const int32_t* sx,
                                      int ws) noexcept nogil
    Py_ssize_t ck_ma_groups(Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw, const Py_ssize_t* yf,
                            const Py_ssize_t* ylo, const Py_ssize_t* yhi, const float* ywl,
                            const float* ywh, const Py_ssize_t* xf, const Py_ssize_t* xlo,
                            const Py_ssize_t* xhi, const float* xwl, const float* xwh,
                            const Py_ssize_t* sf, const int32_t* rel, Py_ssize_t* gf,
                            Py_ssize_t* goff, float* gwt, int32_t* gdm, int32_t* sx,
                            int* ws) noexcept nogil
