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
// outside the image is 0 and not read; a NaN point samples NaN.  The offset gradient is the
// derivative inside the point's cell, also on the edges y = -1, x = -1 (torchvision's).

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// One sample point's geometry: the top-left corner (hl, wl), the fractions (lh, lw), and
// whether it is inside the sampled range (-1 < y < H, -1 < x < W), inside the closed range
// (-1 <= y, -1 <= x: the edges sample 0 but, as torchvision's, have an offset gradient from
// their cell), or a NaN point.
struct DcPoint {
    long long hl, wl;
    scalar_t lh, lw;
    bool inside, closed, nan;
};

__device__ __forceinline__ DcPoint dc_point(scalar_t y, scalar_t x, long long H, long long W)
{
    DcPoint q;
    q.nan = (y != y) || (x != x);
    q.closed = y >= (scalar_t)-1 && y < (scalar_t)H && x >= (scalar_t)-1 && x < (scalar_t)W;
    q.inside = q.closed && y != (scalar_t)-1 && x != (scalar_t)-1;
    q.hl = q.wl = 0;
    q.lh = q.lw = 0;
    if (q.closed) {
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

// Geometry shared by every kernel (after x, offset, mask, has_mask in their parameters).
struct DcGeom {
    long long B, C, H, W, OG, KH, KW, Ho, Wo, sh, sw, ph, pw, dh, dw;
    __device__ long long KK() const { return KH * KW; }
    __device__ long long P() const { return Ho * Wo; }
    __device__ long long RK() const { return OG * KH * KW; }
};

// Tap r = g*KK + k of output p of image n: its sample point, and its mask value (1 without).
__device__ __forceinline__ DcPoint dc_tap(const DcGeom& G, const scalar_t* off,
                                          const scalar_t* mask, long long has_mask, long long n,
                                          long long r, long long p, scalar_t* y, scalar_t* x,
                                          scalar_t* m)
{
    const long long P = G.P(), k = r % G.KK(), ho = p / G.Wo, wo = p % G.Wo;
    const scalar_t* o = off + (n * 2 * G.RK() + 2 * r) * P + p;
    *y = (scalar_t)(ho * G.sh - G.ph + (k / G.KW) * G.dh) + o[0];
    *x = (scalar_t)(wo * G.sw - G.pw + (k % G.KW) * G.dw) + o[P];
    *m = has_mask ? mask[(n * G.RK() + r) * P + p] : (scalar_t)1;
    return dc_point(*y, *x, G.H, G.W);
}

// Column entry e = ((n*C + c)*KK + k)*P + p: its image n, channel c, tap r and position p.
__device__ __forceinline__ void dc_entry(const DcGeom& G, long long e, long long* n,
                                         long long* c, long long* r, long long* p)
{
    const long long P = G.P(), KK = G.KK();
    *p = e % P;
    const long long t = e / P, k = t % KK;
    *c = (t / KK) % G.C;
    *n = t / KK / G.C;
    *r = (*c / (G.C / G.OG)) * KK + k;
}

// (the kernels spell their parameters out: convkit_cuda._kernels parses them from this file)
#define DC_GEOM {B, C, H, W, OG, KH, KW, Ho, Wo, sh, sw, ph, pw, dh, dw}

// cols[n, c*KK + k, p] = mask * sample; one thread per column entry; writes all of cols.
extern "C" __global__ void deform_im2col(
    const scalar_t* x, const scalar_t* off, const scalar_t* mask, long long has_mask,
    long long B, long long C, long long H, long long W, long long OG, long long KH, long long KW,
    long long Ho, long long Wo, long long sh, long long sw, long long ph, long long pw,
    long long dh, long long dw, scalar_t* cols)
{
    const DcGeom G = DC_GEOM;
    GRID_STRIDE_LOOP(e, B * C * G.KK() * G.P()) {
        long long n, c, r, p;
        dc_entry(G, e, &n, &c, &r, &p);
        scalar_t y, xx, m;
        const DcPoint q = dc_tap(G, off, mask, has_mask, n, r, p, &y, &xx, &m);
        scalar_t s = 0;
        if (q.nan) {
            s = y + xx;                     // NaN
        } else if (q.inside) {
            scalar_t v[4];
            dc_corners(x + (n * C + c) * H * W, H, W, q, v);
            s = dc_mix(q, v);
        }
        cols[e] = has_mask ? m * s : s;
    }
}

// Offset and mask gradients: one thread per (n, r, p) sums over the channels of its offset
// group in order (deterministic).  gcols = dL/dcols.  Writes all of goff and, with has_mask,
// of gmask.
extern "C" __global__ void deform_coord_grad(
    const scalar_t* x, const scalar_t* off, const scalar_t* mask, long long has_mask,
    const scalar_t* gcols,
    long long B, long long C, long long H, long long W, long long OG, long long KH, long long KW,
    long long Ho, long long Wo, long long sh, long long sw, long long ph, long long pw,
    long long dh, long long dw, scalar_t* goff, scalar_t* gmask)
{
    const DcGeom G = DC_GEOM;
    const long long KK = G.KK(), P = G.P(), RK = G.RK(), Cog = C / OG;
    GRID_STRIDE_LOOP(e, B * RK * P) {
        const long long p = e % P, r = (e / P) % RK, n = e / (P * RK);
        const long long g = r / KK, k = r % KK;
        scalar_t y, xx, m;
        const DcPoint q = dc_tap(G, off, mask, has_mask, n, r, p, &y, &xx, &m);
        const scalar_t hh = (scalar_t)1 - q.lh, hw = (scalar_t)1 - q.lw;
        scalar_t ay = 0, ax = 0, am = 0;
        for (long long c = g * Cog; c < (g + 1) * Cog; ++c) {
            const scalar_t gc = gcols[((n * C + c) * KK + k) * P + p];
            const scalar_t gs = has_mask ? gc * m : gc;
            scalar_t s = 0, dy = 0, dx = 0;
            if (q.nan) {
                s = dy = dx = y + xx;       // NaN
            } else if (q.closed) {
                scalar_t v[4];
                dc_corners(x + (n * C + c) * H * W, H, W, q, v);
                if (q.inside) s = dc_mix(q, v);
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

// The four shares of column entry e in grad_x: dL/d(sample) * bilinear weight at the corners
// the sample read (ok[j] false: not read, no share).  Returns the corners' flat position in
// the plane of (n, c) through *b.
__device__ __forceinline__ bool dc_shares(const DcGeom& G, const scalar_t* off,
                                          const scalar_t* mask, long long has_mask,
                                          const scalar_t* gcols, long long e, long long* n,
                                          long long* c, long long* b, scalar_t* share, bool* ok)
{
    long long r, p;
    dc_entry(G, e, n, c, &r, &p);
    scalar_t y, xx, m;
    const DcPoint q = dc_tap(G, off, mask, has_mask, *n, r, p, &y, &xx, &m);
    if (!q.inside) return false;
    const scalar_t g = has_mask ? gcols[e] * m : gcols[e];
    const scalar_t hh = (scalar_t)1 - q.lh, hw = (scalar_t)1 - q.lw;
    const bool h0 = q.hl >= 0, h1 = q.hl + 1 < G.H, w0 = q.wl >= 0, w1 = q.wl + 1 < G.W;
    *b = q.hl * G.W + q.wl;
    share[0] = g * (hh * hw);
    share[1] = g * (hh * q.lw);
    share[2] = g * (q.lh * hw);
    share[3] = g * (q.lh * q.lw);
    ok[0] = h0 && w0;
    ok[1] = h0 && w1;
    ok[2] = h1 && w0;
    ok[3] = h1 && w1;
    return true;
}

// grad_x by atomicAdd (the default path): one thread per column entry adds its shares to the
// corners its sample read.  gx (B, C, H, W) zero-filled by the caller.  The order of the
// additions varies between runs.
extern "C" __global__ void deform_col2im_atomic(
    const scalar_t* off, const scalar_t* mask, long long has_mask, const scalar_t* gcols,
    long long B, long long C, long long H, long long W, long long OG, long long KH, long long KW,
    long long Ho, long long Wo, long long sh, long long sw, long long ph, long long pw,
    long long dh, long long dw, scalar_t* gx)
{
    const DcGeom G = DC_GEOM;
    GRID_STRIDE_LOOP(e, B * C * G.KK() * G.P()) {
        long long n, c, b;
        scalar_t share[4];
        bool ok[4];
        if (!dc_shares(G, off, mask, has_mask, gcols, e, &n, &c, &b, share, ok)) continue;
        scalar_t* gp = gx + (n * C + c) * H * W + b;
        if (ok[0]) atomicAdd(gp, share[0]);
        if (ok[1]) atomicAdd(gp + 1, share[1]);
        if (ok[2]) atomicAdd(gp + W, share[2]);
        if (ok[3]) atomicAdd(gp + W + 1, share[3]);
    }
}

// grad_x, deterministic path: column entry e's four shares vals[4e + j] and their flat
// positions keys[4e + j] in gx (B, C, H, W), -1 for a corner not read; the launcher adds them
// with the ordered gather of pool.cu (csr_*).  Writes all of vals and keys.
extern "C" __global__ void deform_col2im_keys(
    const scalar_t* off, const scalar_t* mask, long long has_mask, const scalar_t* gcols,
    long long B, long long C, long long H, long long W, long long OG, long long KH, long long KW,
    long long Ho, long long Wo, long long sh, long long sw, long long ph, long long pw,
    long long dh, long long dw, scalar_t* vals, long long* keys)
{
    const DcGeom G = DC_GEOM;
    GRID_STRIDE_LOOP(e, B * C * G.KK() * G.P()) {
        long long n, c, b;
        scalar_t share[4];
        bool ok[4];
        const bool in = dc_shares(G, off, mask, has_mask, gcols, e, &n, &c, &b, share, ok);
        const long long corner[4] = {0, 1, W, W + 1};
        for (int j = 0; j < 4; ++j) {
            const bool use = in && ok[j];
            vals[4 * e + j] = use ? share[j] : (scalar_t)0;
            keys[4 * e + j] = use ? (n * C + c) * H * W + b + corner[j] : -1;
        }
    }
}
