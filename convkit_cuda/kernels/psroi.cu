// Position-sensitive RoI align and RoI pool (R-FCN), compiled once per dtype (`typedef
// float|double scalar_t;` is prepended, kernel names get _f32 / _f64).  Semantics are
// torchvision's ps_roi_align / ps_roi_pool kernels, restated in convkit/reference/psroi.py:
// bin (ph, pw) of output channel c reads input channel (c * oh + ph) * ow + pw only.
//
// x (N, C, H, W) with C = C_out * oh * ow; y / gy (K, C_out, oh, ow); rois (K, 5) rows
// [batch_index, x1, y1, x2, y2] unchecked (CudaBackend.validates_rois): the per-RoI geometry
// kernels (ps_align_geom, ps_pool_edges) run first, mark a row whose batch index is not an
// integer in [0, N) (bit BAD_BATCH of *bad; the launcher raises) or whose coordinates are not
// finite with image -1, and the op kernels give such a RoI zeros and no gradient.

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

#define BAD_BATCH 2ULL   // the bit convkit_cuda/roi.py's check() reads

// The image of RoI row r if its batch index is an integer in [0, N) and its coordinates are
// finite, else -1 (*bad_batch set for a bad index; NaN included).
__device__ __forceinline__ long long ps_image(const scalar_t* r, long long N, bool* bad_batch)
{
    const double b = (double)r[0];
    *bad_batch = !(b >= 0.0 && b < (double)N && b == floor(b));
    if (*bad_batch) return -1;
    const double lim = sizeof(scalar_t) == 4 ? 3.4028234663852886e38 : 1.7976931348623157e308;
    for (int j = 1; j < 5; ++j) {
        const double v = (double)r[j];
        if (!(v >= -lim && v <= lim)) return -1;
    }
    return (long long)b;
}

// ------------------------------------------------------------------------------ ps_roi_align

// Per RoI k: geo[4k..4k+3] = (y0, bin_h, x0, bin_w) -- corners scaled minus 0.5, no minimum
// size (torchvision) -- and igeo[3k..3k+2] = (image or -1, grid_h, grid_w): sampling_ratio
// or ceil(bin size), clamped to [-2^30, 2^30] so the casts stay defined (<= 0: no samples).
extern "C" __global__ void ps_align_geom(
    const scalar_t* rois, long long K, long long N, long long oh, long long ow, scalar_t scale,
    long long sampling_ratio, scalar_t* geo, long long* igeo, unsigned long long* bad)
{
    GRID_STRIDE_LOOP(k, K) {
        const scalar_t* r = rois + k * 5;
        bool bad_batch;
        const long long n = ps_image(r, N, &bad_batch);
        if (bad_batch) atomicOr(bad, BAD_BATCH);
        const scalar_t half = (scalar_t)0.5;
        const scalar_t x0 = r[1] * scale - half, y0 = r[2] * scale - half;
        const scalar_t bw = (r[3] * scale - half - x0) / (scalar_t)ow;
        const scalar_t bh = (r[4] * scale - half - y0) / (scalar_t)oh;
        const double lim = 1073741824.0;   // 2^30
        double gh = sampling_ratio > 0 ? (double)sampling_ratio : ceil((double)bh);
        double gw = sampling_ratio > 0 ? (double)sampling_ratio : ceil((double)bw);
        gh = gh != gh ? 0.0 : (gh < -lim ? -lim : (gh > lim ? lim : gh));
        gw = gw != gw ? 0.0 : (gw < -lim ? -lim : (gw > lim ? lim : gw));
        geo[4 * k] = y0;
        geo[4 * k + 1] = bh;
        geo[4 * k + 2] = x0;
        geo[4 * k + 3] = bw;
        igeo[3 * k] = n;
        igeo[3 * k + 1] = (long long)gh;
        igeo[3 * k + 2] = (long long)gw;
    }
}

// Sample i of n in a bin lies at base + ((i + 0.5) * bin) / n.  Sets [*i0, *i1) to a superset
// of the samples whose coordinate can fall in [lo, hi] (a margin covers the rounding of the
// positions), so a huge RoI costs time in proportion to its part over the map.  When the step
// is 0 all n samples coincide: one is visited and *rep = n.  A non-finite base or bin (an
// overflowed geometry) gives no samples.
__device__ __forceinline__ void ps_window(scalar_t base, scalar_t bin, long long n, double lo,
                                          double hi, long long* i0, long long* i1, long long* rep)
{
    const double b = (double)base, s = (double)bin / (double)n;
    *rep = 1;
    *i0 = 0;
    *i1 = 0;
    if (n <= 0 || !(b - b == 0.0) || !(s - s == 0.0)) return;
    if (s == 0.0) {
        *i1 = 1;
        *rep = n;
        return;
    }
    double a = (lo - b) / s - 0.5, e = (hi - b) / s - 0.5;
    if (a > e) {
        const double t = a;
        a = e;
        e = t;
    }
    const double eps = sizeof(scalar_t) == 4 ? 1e-6 : 1e-14;
    const double as = s < 0 ? -s : s, ab = b < 0 ? -b : b, abin = bin < 0 ? -bin : bin;
    const double margin = 2.0 + eps * (ab + abin + (lo < 0 ? -lo : lo) + (hi < 0 ? -hi : hi)) / as;
    double first = floor(a - margin), last = ceil(e + margin) + 1.0;
    first = first > 0.0 ? first : 0.0;
    last = last < (double)n ? last : (double)n;
    *i0 = (long long)first;
    *i1 = last > first ? (long long)last : (long long)first;
}

// Sample i of n along one axis of a bin: base + ((i + 0.5) * bin) / n (torchvision's order).
__device__ __forceinline__ scalar_t ps_pos(scalar_t base, scalar_t bin, long long i, long long n)
{
    return base + ((scalar_t)i + (scalar_t)0.5) * bin / (scalar_t)n;
}

// torchvision's bilinear rule: false (weight 0) more than one pixel outside the map;
// [-1, 0] clamps to 0; at the last row/column both neighbours are the edge.  Weights in
// torchvision's order (hy*hx, hy*lx, ly*hx, ly*lx).  A NaN coordinate gives false.
__device__ __forceinline__ bool ps_bilinear(long long H, long long W, scalar_t y, scalar_t x,
                                            scalar_t* w, long long* yl, long long* yh,
                                            long long* xl, long long* xh)
{
    if (!(y >= (scalar_t)-1.0 && y <= (scalar_t)H && x >= (scalar_t)-1.0 && x <= (scalar_t)W))
        return false;
    if (y <= 0) y = 0;
    if (x <= 0) x = 0;
    *yl = (long long)y;
    *xl = (long long)x;
    *yh = *yl + 1;
    *xh = *xl + 1;
    if (*yl >= H - 1) {
        *yh = *yl = H - 1;
        y = (scalar_t)*yl;
    }
    if (*xl >= W - 1) {
        *xh = *xl = W - 1;
        x = (scalar_t)*xl;
    }
    const scalar_t ly = y - (scalar_t)*yl, lx = x - (scalar_t)*xl;
    const scalar_t hy = (scalar_t)1 - ly, hx = (scalar_t)1 - lx;
    w[0] = hy * hx;
    w[1] = hy * lx;
    w[2] = ly * hx;
    w[3] = ly * lx;
    return true;
}

// The samples of bin (p, q) of RoI k that can touch rows [ylo, yhi] and columns [xlo, xhi]
// (in sample indices), their bases and the repeat factor; false when the RoI has none.
struct PsBin {
    scalar_t ybase, xbase, bh, bw, count;
    long long gh, gw, iy0, iy1, ix0, ix1, rep;
};

__device__ __forceinline__ bool ps_bin(const scalar_t* geo, const long long* igeo, long long k,
                                       long long p, long long q, double ylo, double yhi,
                                       double xlo, double xhi, PsBin* s)
{
    s->gh = igeo[3 * k + 1];
    s->gw = igeo[3 * k + 2];
    if (igeo[3 * k] < 0 || s->gh <= 0 || s->gw <= 0) return false;
    s->bh = geo[4 * k + 1];
    s->bw = geo[4 * k + 3];
    s->ybase = (scalar_t)p * s->bh + geo[4 * k];
    s->xbase = (scalar_t)q * s->bw + geo[4 * k + 2];
    s->count = (scalar_t)(s->gh * s->gw);
    long long ry, rx;
    ps_window(s->ybase, s->bh, s->gh, ylo, yhi, &s->iy0, &s->iy1, &ry);
    ps_window(s->xbase, s->bw, s->gw, xlo, xhi, &s->ix0, &s->ix1, &rx);
    s->rep = ry * rx;
    return s->iy0 < s->iy1 && s->ix0 < s->ix1;
}

// Writes every element of y: each bin the sum of its samples (on its own channel plane) over
// grid_h * grid_w; 0 for a bin without samples and for a skipped RoI.
extern "C" __global__ void ps_align_fwd(
    const scalar_t* x, const scalar_t* geo, const long long* igeo, long long K, long long C,
    long long H, long long W, long long oh, long long ow, scalar_t* y)
{
    const long long nb = oh * ow, co = C / nb;
    GRID_STRIDE_LOOP(i, K * co * nb) {
        const long long b = i % nb, k = i / (co * nb), c = (i / nb) % co;
        PsBin s;
        scalar_t acc = 0;
        if (ps_bin(geo, igeo, k, b / ow, b % ow, -1.0, (double)H, -1.0, (double)W, &s)) {
            const scalar_t* xp = x + (igeo[3 * k] * C + c * nb + b) * H * W;
            for (long long iy = s.iy0; iy < s.iy1; ++iy) {
                const scalar_t yy = ps_pos(s.ybase, s.bh, iy, s.gh);
                for (long long ix = s.ix0; ix < s.ix1; ++ix) {
                    const scalar_t xx = ps_pos(s.xbase, s.bw, ix, s.gw);
                    scalar_t w[4];
                    long long yl, yh, xl, xh;
                    if (!ps_bilinear(H, W, yy, xx, w, &yl, &yh, &xl, &xh)) continue;
                    const scalar_t v = w[0] * xp[yl * W + xl] + w[1] * xp[yl * W + xh]
                                     + w[2] * xp[yh * W + xl] + w[3] * xp[yh * W + xh];
                    acc += s.rep == 1 ? v : (scalar_t)s.rep * v;
                }
            }
            acc = acc / s.count;
        }
        y[i] = acc;
    }
}

// Gradient of ps_align_fwd by scatter: one thread per element of gy adds (g * w) / count to
// the four neighbours of every sample with atomicAdd into gx (zero-filled by the caller).
// The order of the additions into one element varies between runs: not bit-reproducible.
extern "C" __global__ void ps_align_bwd_atomic(
    const scalar_t* gy, const scalar_t* geo, const long long* igeo, long long K, long long C,
    long long H, long long W, long long oh, long long ow, scalar_t* gx)
{
    const long long nb = oh * ow, co = C / nb;
    GRID_STRIDE_LOOP(i, K * co * nb) {
        const long long b = i % nb, k = i / (co * nb), c = (i / nb) % co;
        PsBin s;
        if (!ps_bin(geo, igeo, k, b / ow, b % ow, -1.0, (double)H, -1.0, (double)W, &s))
            continue;
        scalar_t* gp = gx + (igeo[3 * k] * C + c * nb + b) * H * W;
        const scalar_t g = gy[i], rep = (scalar_t)s.rep;
        for (long long iy = s.iy0; iy < s.iy1; ++iy) {
            const scalar_t yy = ps_pos(s.ybase, s.bh, iy, s.gh);
            for (long long ix = s.ix0; ix < s.ix1; ++ix) {
                const scalar_t xx = ps_pos(s.xbase, s.bw, ix, s.gw);
                scalar_t w[4];
                long long yl, yh, xl, xh;
                if (!ps_bilinear(H, W, yy, xx, w, &yl, &yh, &xl, &xh)) continue;
                atomicAdd(gp + yl * W + xl, rep * (g * w[0] / s.count));
                atomicAdd(gp + yl * W + xh, rep * (g * w[1] / s.count));
                atomicAdd(gp + yh * W + xl, rep * (g * w[2] / s.count));
                atomicAdd(gp + yh * W + xh, rep * (g * w[3] / s.count));
            }
        }
    }
}

// Deterministic gradient of ps_align_fwd by gather: one thread per element (n, c_in, h, w) of
// gx visits, in RoI order, bin (p, q) = divmod(c_in % (oh*ow), ow) of the image's RoIs -- the
// only bin that reads plane c_in -- and within it the samples whose coordinates can touch row
// h / column w (a coordinate in [h - 2, h + 1]: within one pixel, or clamped to 0 from
// [-1, 0)), adding the same terms as the atomic kernel in a fixed order.  Writes all of gx.
extern "C" __global__ void ps_align_bwd_gather(
    const scalar_t* gy, const scalar_t* geo, const long long* igeo, long long K, long long N,
    long long C, long long H, long long W, long long oh, long long ow, scalar_t* gx)
{
    const long long nb = oh * ow, co = C / nb;
    GRID_STRIDE_LOOP(i, N * C * H * W) {
        const long long w = i % W, h = (i / W) % H, ci = (i / (H * W)) % C, n = i / (C * H * W);
        const long long b = ci % nb, c = ci / nb;
        scalar_t acc = 0;
        for (long long k = 0; k < K; ++k) {
            PsBin s;
            if (igeo[3 * k] != n) continue;
            if (!ps_bin(geo, igeo, k, b / ow, b % ow, (double)h - 2.0, (double)h + 1.0,
                        (double)w - 2.0, (double)w + 1.0, &s))
                continue;
            const scalar_t g = gy[(k * co + c) * nb + b], rep = (scalar_t)s.rep;
            for (long long iy = s.iy0; iy < s.iy1; ++iy) {
                const scalar_t yy = ps_pos(s.ybase, s.bh, iy, s.gh);
                for (long long ix = s.ix0; ix < s.ix1; ++ix) {
                    const scalar_t xx = ps_pos(s.xbase, s.bw, ix, s.gw);
                    scalar_t wt[4];
                    long long yl, yh, xl, xh;
                    if (!ps_bilinear(H, W, yy, xx, wt, &yl, &yh, &xl, &xh)) continue;
                    if (yl == h && xl == w) acc += rep * (g * wt[0] / s.count);
                    if (yl == h && xh == w) acc += rep * (g * wt[1] / s.count);
                    if (yh == h && xl == w) acc += rep * (g * wt[2] / s.count);
                    if (yh == h && xh == w) acc += rep * (g * wt[3] / s.count);
                }
            }
        }
        gx[i] = acc;
    }
}

// ------------------------------------------------------------------------------- ps_roi_pool

// A bin edge clipped to [0, limit] (NaN -> 0), from a double holding an integer.
__device__ __forceinline__ long long ps_edge(double e, long long limit)
{
    if (!(e > 0.0)) return 0;
    return e > (double)limit ? limit : (long long)e;
}

// Per RoI k, row e = edges + k * (1 + 2 * (oh + ow)): e[0] the image (-1: skipped RoI), then
// hstart[oh], hend[oh], wstart[ow], wend[ow].  Corners scaled and rounded half away from
// zero, the RoI max(round(x2*s) - round(x1*s), 1) cells (no +1), bin p [floor(p*bin),
// ceil((p+1)*bin)) from the start, clipped to [0, H-1] / [0, W-1] (torchvision's forward).
extern "C" __global__ void ps_pool_edges(
    const scalar_t* rois, long long K, long long N, long long H, long long W, long long oh,
    long long ow, scalar_t scale, long long* edges, unsigned long long* bad)
{
    GRID_STRIDE_LOOP(k, K) {
        const scalar_t* r = rois + k * 5;
        long long* e = edges + k * (1 + 2 * (oh + ow));
        bool bad_batch;
        e[0] = ps_image(r, N, &bad_batch);
        if (bad_batch) atomicOr(bad, BAD_BATCH);
        const double sw = round((double)(r[1] * scale)), sh = round((double)(r[2] * scale));
        double cw = round((double)(r[3] * scale)) - sw, ch = round((double)(r[4] * scale)) - sh;
        if (cw < 1) cw = 1;      // (a NaN stays NaN and empties the bins)
        if (ch < 1) ch = 1;
        const scalar_t bin_h = (scalar_t)ch / (scalar_t)oh, bin_w = (scalar_t)cw / (scalar_t)ow;
        for (long long p = 0; p < oh; ++p) {
            e[1 + p] = ps_edge(floor((double)((scalar_t)p * bin_h)) + sh, H - 1);
            e[1 + oh + p] = ps_edge(ceil((double)((scalar_t)(p + 1) * bin_h)) + sh, H - 1);
        }
        for (long long q = 0; q < ow; ++q) {
            e[1 + 2 * oh + q] = ps_edge(floor((double)((scalar_t)q * bin_w)) + sw, W - 1);
            e[1 + 2 * oh + ow + q] = ps_edge(ceil((double)((scalar_t)(q + 1) * bin_w)) + sw, W - 1);
        }
    }
}

// Writes every element of y: the mean of the bin's cells on its own plane, row-major sum;
// 0 for an empty bin and for a skipped RoI.
extern "C" __global__ void ps_pool_fwd(
    const scalar_t* x, const long long* edges, long long K, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t* y)
{
    const long long nb = oh * ow, co = C / nb;
    GRID_STRIDE_LOOP(i, K * co * nb) {
        const long long b = i % nb, k = i / (co * nb), c = (i / nb) % co;
        const long long p = b / ow, q = b % ow;
        const long long* e = edges + k * (1 + 2 * (oh + ow));
        const long long hs = e[1 + p], he = e[1 + oh + p];
        const long long ws = e[1 + 2 * oh + q], we = e[1 + 2 * oh + ow + q];
        scalar_t acc = 0;
        if (e[0] >= 0 && he > hs && we > ws) {
            const scalar_t* xp = x + (e[0] * C + c * nb + b) * H * W;
            for (long long h = hs; h < he; ++h)
                for (long long w = ws; w < we; ++w) acc += xp[h * W + w];
            acc = acc / (scalar_t)((he - hs) * (we - ws));
        }
        y[i] = acc;
    }
}

// Gradient of ps_pool_fwd by gather, deterministic: one thread per element (n, c_in, h, w)
// of gx adds, in RoI order, grad / area of the bin of each of the image's RoIs that reads
// plane c_in and covers (h, w).  Writes all of gx.
extern "C" __global__ void ps_pool_bwd(
    const scalar_t* gy, const long long* edges, long long K, long long N, long long C,
    long long H, long long W, long long oh, long long ow, scalar_t* gx)
{
    const long long nb = oh * ow, co = C / nb;
    GRID_STRIDE_LOOP(i, N * C * H * W) {
        const long long w = i % W, h = (i / W) % H, ci = (i / (H * W)) % C, n = i / (C * H * W);
        const long long b = ci % nb, c = ci / nb, p = b / ow, q = b % ow;
        scalar_t acc = 0;
        for (long long k = 0; k < K; ++k) {
            const long long* e = edges + k * (1 + 2 * (oh + ow));
            if (e[0] != n) continue;
            const long long hs = e[1 + p], he = e[1 + oh + p];
            const long long ws = e[1 + 2 * oh + q], we = e[1 + 2 * oh + ow + q];
            if (h < hs || h >= he || w < ws || w >= we) continue;
            acc += gy[(k * co + c) * nb + b] / (scalar_t)((he - hs) * (we - ws));
        }
        gx[i] = acc;
    }
}
