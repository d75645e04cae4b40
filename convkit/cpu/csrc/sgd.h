/* One torch.optim.SGD update of one parameter, element by element, with the roundings of the
 * numpy expressions it replaces (convkit/nn/optim.py's generic path, the Backend default):
 *     d = g + wd * p            (when wd != 0: has_wd, decided on the Python float)
 *     buf = d                   (the first step: fresh != 0)
 *     buf = buf * mu + d        (later; (1 - damp) * d instead of d when damp != 0)
 *     d = d + mu * buf          (Nesterov) or d = buf
 *     p = p - lr * d
 * Each product and sum is rounded to the array's type on its own, as numpy's separate ufunc
 * calls do: no a*b+c may become one FMA (the file forbids contraction).  The scalars are
 * converted to the array's type first (numpy's rule for a Python float with a float32 array),
 * by the caller; whether a term is there at all (has_wd, has_mu, damp) follows the Python
 * floats, as the numpy path's `if wd:` does (a tiny wd that rounds to 0.0f still adds 0 * p).  One pass reads each element's p, g and buf once instead of four ufunc calls
 * and two temporaries per parameter (LeNet5's ten parameters: ~30 us of numpy calls a step). */
#ifndef CK_SGD_H
#define CK_SGD_H

#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

/* The body with the flags as compile-time constants at each call below: with the branches
 * gone GCC vectorises the loop (as one loop with five live flags it stayed scalar, ~14
 * instructions an element). */
#define CK_SGD_BODY(T)                                                                       \
    for (ptrdiff_t i = 0; i < n; i++) {                                                      \
        T d = g[i];                                                                          \
        if (has_wd) {                                                                        \
            const T t = wd * p[i];                                                           \
            d = d + t;                                                                       \
        }                                                                                    \
        if (has_mu) {                                                                        \
            T b;                                                                             \
            if (fresh) {                                                                     \
                b = d;                                                                       \
            } else {                                                                         \
                b = buf[i] * mu;                                                             \
                if (damp) {                                                                  \
                    const T t = one_m_damp * d;                                              \
                    b = b + t;                                                               \
                } else {                                                                     \
                    b = b + d;                                                               \
                }                                                                            \
            }                                                                                \
            buf[i] = b;                                                                      \
            if (nesterov) {                                                                  \
                const T t = mu * b;                                                          \
                d = d + t;                                                                   \
            } else {                                                                         \
                d = b;                                                                       \
            }                                                                                \
        }                                                                                    \
        const T t = lr * d;                                                                  \
        p[i] = p[i] - t;                                                                     \
    }

/* each flag combination that can occur (damp only matters after the first step) */
#define CK_SGD_DISPATCH(F)                                                                   \
    if (!has_mu) {                                                                           \
        if (has_wd) F(1, 0, 0, 0, 0); else F(0, 0, 0, 0, 0);                                 \
    } else if (fresh) {                                                                      \
        if (has_wd) { if (nesterov) F(1, 1, 0, 1, 1); else F(1, 1, 0, 0, 1); }               \
        else { if (nesterov) F(0, 1, 0, 1, 1); else F(0, 1, 0, 0, 1); }                      \
    } else if (has_wd) {                                                                     \
        if (damp) { if (nesterov) F(1, 1, 1, 1, 0); else F(1, 1, 1, 0, 0); }                 \
        else { if (nesterov) F(1, 1, 0, 1, 0); else F(1, 1, 0, 0, 0); }                      \
    } else {                                                                                 \
        if (damp) { if (nesterov) F(0, 1, 1, 1, 0); else F(0, 1, 1, 0, 0); }                 \
        else { if (nesterov) F(0, 1, 0, 1, 0); else F(0, 1, 0, 0, 0); }                      \
    }

static inline __attribute__((always_inline)) void
ck_sgd_f_k(float *p, const float *g, float *buf, ptrdiff_t n, float lr, float mu,
           float one_m_damp, float wd, const int has_wd, const int has_mu, const int damp,
           const int nesterov, const int fresh)
{
    CK_SGD_BODY(float)
}

static inline __attribute__((always_inline)) void
ck_sgd_d_k(double *p, const double *g, double *buf, ptrdiff_t n, double lr, double mu,
           double one_m_damp, double wd, const int has_wd, const int has_mu, const int damp,
           const int nesterov, const int fresh)
{
    CK_SGD_BODY(double)
}

static void ck_sgd_f(float *p, const float *g, float *buf, ptrdiff_t n, float lr, int has_mu,
                     float mu, int damp, float one_m_damp, int has_wd, float wd, int nesterov,
                     int fresh)
{
#define CK_SGD_F(a, b, c, d, e) ck_sgd_f_k(p, g, buf, n, lr, mu, one_m_damp, wd, a, b, c, d, e)
    CK_SGD_DISPATCH(CK_SGD_F)
#undef CK_SGD_F
}

static void ck_sgd_d(double *p, const double *g, double *buf, ptrdiff_t n, double lr,
                     int has_mu, double mu, int damp, double one_m_damp, int has_wd, double wd,
                     int nesterov, int fresh)
{
#define CK_SGD_D(a, b, c, d, e) ck_sgd_d_k(p, g, buf, n, lr, mu, one_m_damp, wd, a, b, c, d, e)
    CK_SGD_DISPATCH(CK_SGD_D)
#undef CK_SGD_D
}

#undef CK_SGD_DISPATCH
#undef CK_SGD_BODY

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif
