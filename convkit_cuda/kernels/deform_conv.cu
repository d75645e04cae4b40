// Deformable convolution (compiled once per dtype: `typedef float|double scalar_t;` is
// prepended and kernel names get a _f32 / _f64 suffix).  Semantics are torchvision's
// deform_conv2d (restated in convkit/reference/deform_conv.py); the code is written for
// convkit.
//
// x (B, C, H, W) -- a chunk of images; offset (B, 2*OG*KH*KW, Ho, Wo), channels ordered
// (offset group, i, j, (dy, dx)); mask (B, OG*KH*KW, Ho, Wo), read only when has_mask;
// cols / gcols (B, C*KH*KW, Ho*Wo), rows ordered (c, i, j) like weight[f].ravel().
// Tap (i, j) of output (ho, wo) samples x at y = ho*sh - ph + i*dh + dy,
// x = wo*sw - pw + j*dw + dx: bilinear, 0 for y <= -1, y >= H, x <= -1 or x >= W, a corner
// outside the image is 0 and not read; a NaN point samples NaN.

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// One sample point's geometry: the top-left corner (hl, wl), the fractions (lh, lw), and
// whether it is inside the sampled range / a NaN point.
struct DcPoint {
    long long hl, wl;
    scalar_t lh, lw;
    bool inside, nan;
};

__device__ __forceinline__ DcPoint dc_point(scalar_t y, scalar_t x, long long H, long long W)
{
    DcPoint q;
    q.nan = (y != y) || (x != x);
    q.inside = y > (scalar_t)-1 && y < (scalar_t)H && x > (scalar_t)-1 && x < (scalar_t)W;
    q.hl = q.wl = 0;
    q.lh = q.lw = 0;
    if (q.inside) {
        const scalar_t hf = (scalar_t)floor((double)y), wf = (scalar_t)floor((double)x);
        q.hl = (long long)hf;
        q.wl = (long long)wf;
        q.lh = y - hf;
        q.lw = x - wf;
    }
    return q;
}

// The four corners v1 (hl, wl), v2 (hl, wl+1), v3 (hl+1, wl), v4 (hl+1, wl+1) of an inside
// point of plane xp; 0 outside the image.
__device__ __forceinline__ void dc_corners(const scalar_t* xp, long long H, long long W,
                                           const DcPoint& q, scalar_t* v)
{
    const bool h0 = q.hl >= 0, h1 = q.hl + 1 < H, w0 = q.wl >= 0, w1 = q.wl + 1 < W;
    const long long b = q.hl * W + q.wl;
    v[0] = (h0 && w0) ? xp[b] : (scalar_t)0;
    v[1] = (h0 && w1) ? xp[b + 1] : (scalar_t)0;
    v[2] = (h1 && w0) ? xp[b + W] : (scalar_t)0;
    v[3] = (h1 && w1) ? xp[b + W + 1] : (scalar_t)0;
}

// The bilinear sample of an inside point from its corners, in torchvision's order.
__device__ __forceinline__ scalar_t dc_mix(const DcPoint& q, const scalar_t* v)
{
    const scalar_t hh = (scalar_t)1 - q.lh, hw = (scalar_t)1 - q.lw;
    return hh * hw * v[0] + hh * q.lw * v[1] + q.lh * hw * v[2] + q.lh * q.lw * v[3];
}

// Position of tap r = (g*KH + i)*KW + j of output p = ho*Wo + wo of image n.
__device__ __forceinline__ void dc_position(const scalar_t* off, long long n, long long r,
                                            long long i, long long j, long long p, long long Wo,
                                            long long P, long long RK, long long sh, long long sw,
                                            long long ph, long long pw, long long dh,
                                            long long dw, scalar_t* y, scalar_t* x)
{
    const long long ho = p / Wo, wo = p % Wo;
    const scalar_t* o = off + (n * 2 * RK + 2 * r) * P + p;
    *y = (scalar_t)(ho * sh - ph + i * dh) + o[0];
    *x = (scalar_t)(wo * sw - pw + j * dw) + o[P];
}

// cols[n, c*KK + k, p] = mask * sample; one thread per column entry; writes all of cols.
extern "C" __global__ void deform_im2col(
    const scalar_t* x, const scalar_t* off, const scalar_t* mask, long long has_mask,
    long long B, long long C, long long H, long long W, long long OG, long long KH, long long KW,
    long long Ho, long long Wo, long long sh, long long sw, long long ph, long long pw,
    long long dh, long long dw, scalar_t* cols)
{
    const long long KK = KH * KW, P = Ho * Wo, RK = OG * KK;
    const long long total = B * C * KK * P;
    GRID_STRIDE_LOOP(e, total) {
        const long long p = e % P;
        long long t = e / P;
        const long long k = t % KK;
        t /= KK;
        const long long c = t % C, n = t / C;
        const long long r = (c / (C / OG)) * KK + k;
        scalar_t y, xx;
        dc_position(off, n, r, k / KW, k % KW, p, Wo, P, RK, sh, sw, ph, pw, dh, dw, &y, &xx);
        const DcPoint q = dc_point(y, xx, H, W);
        scalar_t s = 0;
        if (q.nan) {
            s = y + xx;                     // NaN
        } else if (q.inside) {
            scalar_t v[4];
            dc_corners(x + (n * C + c) * H * W, H, W, q, v);
            s = dc_mix(q, v);
        }
        cols[e] = has_mask ? mask[(n * RK + r) * P + p] * s : s;
    }
}

// Offset and mask gradients: one thread per (n, r, p) sums over the channels of its offset
// group in order (deterministic).  gcols = dL/dcols.  Writes all of goff and, with has_mask,
// of gmask.
extern "C" __global__ void deform_coord_grad(
    const scalar_t* x, const scalar_t* off, const scalar_t* mask, long long has_mask,
    const scalar_t* gcols, long long B, long long C, long long H, long long W, long long OG,
    long long KH, long long KW, long long Ho, long long Wo, long long sh, long long sw,
    long long ph, long long pw, long long dh, long long dw, scalar_t* goff, scalar_t* gmask)
{
    const long long KK = KH * KW, P = Ho * Wo, RK = OG * KK, Cog = C / OG;
    const long long total = B * RK * P;
    GRID_STRIDE_LOOP(e, total) {
        const long long p = e % P;
        const long long r = (e / P) % RK, n = e / (P * RK);
        const long long g = r / KK, k = r % KK;
        scalar_t y, xx;
        dc_position(off, n, r, k / KW, k % KW, p, Wo, P, RK, sh, sw, ph, pw, dh, dw, &y, &xx);
        const DcPoint q = dc_point(y, xx, H, W);
        const scalar_t m = has_mask ? mask[e] : (scalar_t)1;
        const scalar_t hh = (scalar_t)1 - q.lh, hw = (scalar_t)1 - q.lw;
        scalar_t ay = 0, ax = 0, am = 0;
        for (long long c = g * Cog; c < (g + 1) * Cog; ++c) {
            const scalar_t gc = gcols[((n * C + c) * KK + k) * P + p];
            const scalar_t gs = has_mask ? gc * m : gc;
            scalar_t s = 0, dy = 0, dx = 0;
            if (q.nan) {
                s = dy = dx = y + xx;       // NaN
            } else if (q.inside) {
                scalar_t v[4];
                dc_corners(x + (n * C + c) * H * W, H, W, q, v);
                s = dc_mix(q, v);
                dy = q.lw * (v[3] - v[1]) + hw * (v[2] - v[0]);
                dx = q.lh * (v[3] - v[2]) + hh * (v[1] - v[0]);
            }
            am += gc * s;
            ay += gs * dy;
            ax += gs * dx;
        }
        goff[(n * 2 * RK + 2 * r) * P + p] = ay;
        goff[(n * 2 * RK + 2 * r + 1) * P + p] = ax;
        if (has_mask) gmask[e] = am;
    }
}

// grad_x by atomicAdd (the default path): one thread per column entry adds
// gcols * mask * weight to each corner its sample read.  gx (B, C, H, W) zero-filled by the
// caller.  The order of the additions varies between runs.
extern "C" __global__ void deform_col2im_atomic(
    const scalar_t* off, const scalar_t* mask, long long has_mask, const scalar_t* gcols,
    long long B, long long C, long long H, long long W, long long OG, long long KH, long long KW,
    long long Ho, long long Wo, long long sh, long long sw, long long ph, long long pw,
    long long dh, long long dw, scalar_t* gx)
{
    const long long KK = KH * KW, P = Ho * Wo, RK = OG * KK;
    const long long total = B * C * KK * P;
    GRID_STRIDE_LOOP(e, total) {
        const long long p = e % P;
        long long t = e / P;
        const long long k = t % KK;
        t /= KK;
        const long long c = t % C, n = t / C;
        const long long r = (c / (C / OG)) * KK + k;
        scalar_t y, xx;
        dc_position(off, n, r, k / KW, k % KW, p, Wo, P, RK, sh, sw, ph, pw, dh, dw, &y, &xx);
        const DcPoint q = dc_point(y, xx, H, W);
        if (!q.inside) continue;
        const scalar_t g = has_mask ? gcols[e] * mask[(n * RK + r) * P + p] : gcols[e];
        const scalar_t hh = (scalar_t)1 - q.lh, hw = (scalar_t)1 - q.lw;
        scalar_t* gp = gx + (n * C + c) * H * W;
        const long long b = q.hl * W + q.wl;
        const bool h0 = q.hl >= 0, h1 = q.hl + 1 < H, w0 = q.wl >= 0, w1 = q.wl + 1 < W;
        if (h0 && w0) atomicAdd(gp + b, g * (hh * hw));
        if (h0 && w1) atomicAdd(gp + b + 1, g * (hh * q.lw));
        if (h1 && w0) atomicAdd(gp + b + W, g * (q.lh * hw));
        if (h1 && w1) atomicAdd(gp + b + W + 1, g * (q.lh * q.lw));
    }
}

// grad_x, deterministic path: per column entry e its four shares vals[4e + q] and their flat
// positions keys[4e + q] in gx (B, C, H, W), -1 for a corner not read; the launcher adds them
// with the ordered gather of pool.cu (csr_*).  Writes all of vals and keys.
extern "C" __global__ void deform_col2im_keys(
    const scalar_t* off, const scalar_t* mask, long long has_mask, const scalar_t* gcols,
    long long B, long long C, long long H, long long W, long long OG, long long KH, long long KW,
    long long Ho, long long Wo, long long sh, long long sw, long long ph, long long pw,
    long long dh, long long dw, scalar_t* vals, long long* keys)
{
    const long long KK = KH * KW, P = Ho * Wo, RK = OG * KK;
    const long long total = B * C * KK * P;
    GRID_STRIDE_LOOP(e, total) {
        const long long p = e % P;
        long long t = e / P;
        const long long k = t % KK;
        t /= KK;
        const long long c = t % C, n = t / C;
        const long long r = (c / (C / OG)) * KK + k;
        scalar_t y, xx;
        dc_position(off, n, r, k / KW, k % KW, p, Wo, P, RK, sh, sw, ph, pw, dh, dw, &y, &xx);
        const DcPoint q = dc_point(y, xx, H, W);
        for (int j = 0; j < 4; ++j) {
            vals[4 * e + j] = 0;
            keys[4 * e + j] = -1;
        }
        if (!q.inside) continue;
        const scalar_t g = has_mask ? gcols[e] * mask[(n * RK + r) * P + p] : gcols[e];
        const scalar_t hh = (scalar_t)1 - q.lh, hw = (scalar_t)1 - q.lw;
        const long long base = (n * C + c) * H * W, b = q.hl * W + q.wl;
        const bool h0 = q.hl >= 0, h1 = q.hl + 1 < H, w0 = q.wl >= 0, w1 = q.wl + 1 < W;
        if (h0 && w0) { vals[4 * e] = g * (hh * hw); keys[4 * e] = base + b; }
        if (h0 && w1) { vals[4 * e + 1] = g * (hh * q.lw); keys[4 * e + 1] = base + b + 1; }
        if (h1 && w0) { vals[4 * e + 2] = g * (q.lh * hw); keys[4 * e + 2] = base + b + W; }
        if (h1 && w1) { vals[4 * e + 3] = g * (q.lh * q.lw); keys[4 * e + 3] = base + b + W + 1; }
    }
}
