// conv2d kernels (compiled once per dtype: the loader prepends `typedef float|double scalar_t;`
// and suffixes every kernel name with _f32 / _f64).
//
// Layouts (all C-contiguous):
//   x (N, C, H, W), w (F, C/groups, KH, KW), y (N, F, Ho, Wo)
//   col (B, C*KH*KW, Ho*Wo): col[b, (c*KH + kh)*KW + kw, oh*Wo + ow]
//       = x[b, c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw]   (0 outside the image)
// Only the top/left padding (pt, pl) enters the index maths; the bottom/right padding is
// already folded into Ho/Wo by the caller.  Every index is 64-bit; every loop is grid-stride.

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// Writes every element of col.
extern "C" __global__ void conv_im2col(
    const scalar_t* x, long long B, long long C, long long H, long long W,
    long long KH, long long KW, long long sh, long long sw, long long pt, long long pl,
    long long dh, long long dw, long long Ho, long long Wo, scalar_t* col)
{
    const long long total = B * C * KH * KW * Ho * Wo;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long ow = t % Wo; t /= Wo;
        const long long oh = t % Ho; t /= Ho;
        const long long kw = t % KW; t /= KW;
        const long long kh = t % KH; t /= KH;
        const long long c = t % C;
        const long long b = t / C;
        const long long h = oh * sh - pt + kh * dh;
        const long long w = ow * sw - pl + kw * dw;
        col[i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((b * C + c) * H + h) * W + w]
                                                      : (scalar_t)0;
    }
}

// Adjoint of conv_im2col, by gather: each thread owns one element of gx and sums the col
// entries that copied it, in a fixed order (no atomics: deterministic).  Writes all of gx.
extern "C" __global__ void conv_col2im(
    const scalar_t* col, long long B, long long C, long long H, long long W,
    long long KH, long long KW, long long sh, long long sw, long long pt, long long pl,
    long long dh, long long dw, long long Ho, long long Wo, scalar_t* gx)
{
    const long long total = B * C * H * W;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long w = t % W; t /= W;
        const long long h = t % H; t /= H;
        const long long bc = t;                       // b * C + c
        const scalar_t* cb = col + bc * KH * KW * Ho * Wo;
        scalar_t acc = 0;
        for (long long kh = 0; kh < KH; ++kh) {
            const long long yy = h + pt - kh * dh;    // = oh * sh when this tap is used
            if (yy < 0) break;                        // larger kh only go further up
            if (yy % sh != 0) continue;
            const long long oh = yy / sh;
            if (oh >= Ho) continue;
            for (long long kw = 0; kw < KW; ++kw) {
                const long long xx = w + pl - kw * dw;
                if (xx < 0) break;
                if (xx % sw != 0) continue;
                const long long ow = xx / sw;
                if (ow >= Wo) continue;
                acc += cb[((kh * KW + kw) * Ho + oh) * Wo + ow];
            }
        }
        gx[i] = acc;
    }
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
                if (h < 0 || h >= H) continue;
                for (long long kw = 0; kw < KW; ++kw) {
                    const long long ww = w0 + kw * dw;
                    if (ww < 0 || ww >= W) continue;
                    acc += xp[h * W + ww] * wp[kh * KW + kw];
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
            if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
            acc += (double)gy[((n * F + f) * Ho + oh) * Wo + ow]
                 * (double)x[((n * C + c) * H + h) * W + ww];
        }
        partial[i] = acc;
    }
}
