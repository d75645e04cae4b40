// conv2d kernels (compiled once per dtype: the loader prepends `typedef float|double scalar_t;`
// and suffixes every kernel name with _f32 / _f64).
//
// Layouts (all C-contiguous):
//   x (N, C, H, W), w (F, C/groups, KH, KW), y (N, F, Ho, Wo)
//   col (B, C*KH*KW, Ho*Wo): col[b, (c*KH + kh)*KW + kw, oh*Wo + ow]
//       = x[b, c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw]   (0 outside the image)
// Only the top/left padding (pt, pl) enters the index maths; the bottom/right padding is
// already folded into Ho/Wo by the caller.  Every loop is grid-stride; im2col / col2im do their
// index arithmetic in 32 bits when the call's arrays allow (`small`), else in 64 bits.

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// x[plane, h, w], or 0 outside the image (the zero padding of the columns).
__device__ __forceinline__ scalar_t x_or_zero(const scalar_t* x, long long plane, long long H,
                                              long long W, long long h, long long w)
{
    return (h >= 0 && h < H && w >= 0 && w < W) ? x[(plane * H + h) * W + w] : (scalar_t)0;
}

// Index arithmetic in IDX (long long, or unsigned int when the launcher's `small` says every
// index of the call fits in 32 bits: the division chains below are several times cheaper).
// Each body is expanded for both types; `small` is the same for every thread (no divergence).
#define IM2COL_BODY(IDX)                                                                   \
    {                                                                                      \
        const IDX total_ = (IDX)(B * C * KH * KW * Ho * Wo);                              \
        for (IDX i = (IDX)blockIdx.x * blockDim.x + threadIdx.x; i < total_;              \
             i += (IDX)blockDim.x * gridDim.x) {                                           \
            IDX t = i;                                                                     \
            const IDX ow = t % (IDX)Wo; t /= (IDX)Wo;                                      \
            const IDX oh = t % (IDX)Ho; t /= (IDX)Ho;                                      \
            const IDX kw = t % (IDX)KW; t /= (IDX)KW;                                      \
            const IDX kh = t % (IDX)KH; t /= (IDX)KH;                                      \
            const IDX bc = t;                                                              \
            const long long h = (long long)(oh * (IDX)sh + kh * (IDX)dh) - pt;             \
            const long long w = (long long)(ow * (IDX)sw + kw * (IDX)dw) - pl;             \
            col[i] = x_or_zero(x, (long long)bc, H, W, h, w);                             \
        }                                                                                  \
    }

// col[b, (c*KH + kh)*KW + kw, oh*Wo + ow] = x[b, c, ...] (0 outside).  Writes every element of
// col.  `small` != 0: every index of x and col fits in 32 bits.
extern "C" __global__ void conv_im2col(
    const scalar_t* x, long long B, long long C, long long H, long long W,
    long long KH, long long KW, long long sh, long long sw, long long pt, long long pl,
    long long dh, long long dw, long long Ho, long long Wo, long long small, scalar_t* col)
{
    if (small) IM2COL_BODY(unsigned int) else IM2COL_BODY(long long)
}

// Adjoint of conv_im2col, by gather: each thread owns one element of gx and sums the col
// entries that copied it, in a fixed order (no atomics: deterministic).  Writes all of gx.
#define COL2IM_BODY(IDX)                                                                   \
    {                                                                                      \
        const IDX total_ = (IDX)(B * C * H * W);                                           \
        for (IDX i = (IDX)blockIdx.x * blockDim.x + threadIdx.x; i < total_;              \
             i += (IDX)blockDim.x * gridDim.x) {                                           \
            IDX t = i;                                                                     \
            const IDX w = t % (IDX)W; t /= (IDX)W;                                         \
            const IDX h = t % (IDX)H; t /= (IDX)H;                                         \
            const IDX bc = t;                                       /* b * C + c */        \
            const scalar_t* cb = col + bc * (IDX)(KH * KW * Ho * Wo);                      \
            scalar_t acc = 0;                                                              \
            for (long long kh = 0; kh < KH; ++kh) {                                        \
                const long long yy = (long long)h + pt - kh * dh;  /* = oh * sh if used */ \
                if (yy < 0) break;                           /* larger kh: further up */   \
                if ((IDX)yy % (IDX)sh != 0) continue;                                      \
                const IDX oh = (IDX)yy / (IDX)sh;                                          \
                if ((long long)oh >= Ho) continue;                                         \
                for (long long kw = 0; kw < KW; ++kw) {                                    \
                    const long long xx = (long long)w + pl - kw * dw;                      \
                    if (xx < 0) break;                                                     \
                    if ((IDX)xx % (IDX)sw != 0) continue;                                  \
                    const IDX ow = (IDX)xx / (IDX)sw;                                      \
                    if ((long long)ow >= Wo) continue;                                     \
                    acc += cb[(((IDX)kh * (IDX)KW + (IDX)kw) * (IDX)Ho + oh) * (IDX)Wo + ow]; \
                }                                                                          \
            }                                                                              \
            gx[i] = acc;                                                                   \
        }                                                                                  \
    }

extern "C" __global__ void conv_col2im(
    const scalar_t* col, long long B, long long C, long long H, long long W,
    long long KH, long long KW, long long sh, long long sw, long long pt, long long pl,
    long long dh, long long dw, long long Ho, long long Wo, long long small, scalar_t* gx)
{
    if (small) COL2IM_BODY(unsigned int) else COL2IM_BODY(long long)
}

// Grouped / depthwise forward, one thread per output element.  bias is read only when
// has_bias != 0.  Writes all of y.
extern "C" __global__ void conv_direct_fwd(
    const scalar_t* x, const scalar_t* w, const scalar_t* bias, long long has_bias,
    long long N, long long C, long long H, long long W, long long F, long long KH, long long KW,
    long long sh, long long sw, long long pt, long long pl, long long dh, long long dw,
    long long Ho, long long Wo, long long groups, scalar_t* y)
{
    const long long Cg = C / groups, Fg = F / groups;
    const long long total = N * F * Ho * Wo;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long ow = t % Wo; t /= Wo;
        const long long oh = t % Ho; t /= Ho;
        const long long f = t % F;
        const long long n = t / F;
        const long long g = f / Fg;
        const long long h0 = oh * sh - pt, w0 = ow * sw - pl;
        scalar_t acc = 0;
        for (long long cg = 0; cg < Cg; ++cg) {
            const scalar_t* xp = x + (n * C + g * Cg + cg) * H * W;
            const scalar_t* wp = w + (f * Cg + cg) * KH * KW;
            for (long long kh = 0; kh < KH; ++kh) {
                const long long h = h0 + kh * dh;
                const bool h_in = h >= 0 && h < H;
                for (long long kw = 0; kw < KW; ++kw) {
                    const long long ww = w0 + kw * dw;
                    // a padding tap multiplies a zero, as torch's columns do: a NaN or inf
                    // weight reaches y there too
                    const scalar_t xv = (h_in && ww >= 0 && ww < W) ? xp[h * W + ww]
                                                                     : (scalar_t)0;
                    acc += xv * wp[kh * KW + kw];
                }
            }
        }
        y[i] = has_bias ? acc + bias[f] : acc;
    }
}

// Grouped / depthwise gradient w.r.t. x, by gather: one thread per element of gx, summing
// over the filters of its group and the taps that read it.  Writes all of gx.
extern "C" __global__ void conv_direct_bwd_data(
    const scalar_t* gy, const scalar_t* w,
    long long N, long long C, long long H, long long W, long long F, long long KH, long long KW,
    long long sh, long long sw, long long pt, long long pl, long long dh, long long dw,
    long long Ho, long long Wo, long long groups, scalar_t* gx)
{
    const long long Cg = C / groups, Fg = F / groups;
    const long long total = N * C * H * W;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long ww = t % W; t /= W;
        const long long h = t % H; t /= H;
        const long long c = t % C;
        const long long n = t / C;
        const long long g = c / Cg, cg = c % Cg;
        scalar_t acc = 0;
        for (long long fg = 0; fg < Fg; ++fg) {
            const long long f = g * Fg + fg;
            const scalar_t* gp = gy + (n * F + f) * Ho * Wo;
            const scalar_t* wp = w + (f * Cg + cg) * KH * KW;
            for (long long kh = 0; kh < KH; ++kh) {
                const long long yy = h + pt - kh * dh;
                if (yy < 0) break;
                if (yy % sh != 0) continue;
                const long long oh = yy / sh;
                if (oh >= Ho) continue;
                for (long long kw = 0; kw < KW; ++kw) {
                    const long long xx = ww + pl - kw * dw;
                    if (xx < 0) break;
                    if (xx % sw != 0) continue;
                    const long long ow = xx / sw;
                    if (ow >= Wo) continue;
                    acc += gp[oh * Wo + ow] * wp[kh * KW + kw];
                }
            }
        }
        gx[i] = acc;
    }
}

// Grouped / depthwise gradient w.r.t. w, in P partial sums: thread (p, widx) sums the
// positions j = p, p + P, ... of the N*Ho*Wo output positions for weight element widx, in
// double, and writes partial[p * (F*Cg*KH*KW) + widx].  The caller sums over p (fixed
// order: deterministic).  Writes all of partial.
extern "C" __global__ void conv_direct_bwd_weight(
    const scalar_t* gy, const scalar_t* x,
    long long N, long long C, long long H, long long W, long long F, long long KH, long long KW,
    long long sh, long long sw, long long pt, long long pl, long long dh, long long dw,
    long long Ho, long long Wo, long long groups, long long P, double* partial)
{
    const long long Cg = C / groups, Fg = F / groups;
    const long long WS = F * Cg * KH * KW;
    const long long L = N * Ho * Wo;
    const long long total = P * WS;
    GRID_STRIDE_LOOP(i, total) {
        const long long widx = i % WS;
        const long long p = i / WS;
        long long t = widx;
        const long long kw = t % KW; t /= KW;
        const long long kh = t % KH; t /= KH;
        const long long cg = t % Cg;
        const long long f = t / Cg;
        const long long c = (f / Fg) * Cg + cg;
        double acc = 0;
        for (long long j = p; j < L; j += P) {
            long long u = j;
            const long long ow = u % Wo; u /= Wo;
            const long long oh = u % Ho;
            const long long n = u / Ho;
            const long long h = oh * sh - pt + kh * dh;
            const long long ww = ow * sw - pl + kw * dw;
            // a padding tap multiplies a zero (torch's columns): a NaN or inf in gy reaches
            // every weight it meets
            const double xv = (h < 0 || h >= H || ww < 0 || ww >= W)
                ? 0.0 : (double)x[((n * C + c) * H + h) * W + ww];
            acc += (double)gy[((n * F + f) * Ho + oh) * Wo + ow] * xv;
        }
        partial[i] = acc;
    }
}
