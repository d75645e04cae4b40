// RoI pooling and RoI align (compiled once per dtype: `typedef float|double scalar_t;` is
// prepended and kernel names get a _f32 / _f64 suffix).  Semantics are torchvision's
// roi_pool / roi_align kernels (formulas, evaluation order and the bilinear edge rules are
// kept so results agree with torchvision to rounding); the code is written for convkit.
//
// x (N, C, H, W); rois (K, 5) rows [batch_index, x1, y1, x2, y2] in input pixels, exactly as
// the caller gave them (the boundary does not look at them on the device: that would cost a
// device -> host sync per call).  The kernels check them instead: a row whose batch index is
// not an integer in [0, N) is skipped and sets bit BAD_BATCH of the error flag (the launcher
// raises the boundary's error after the kernel); a row with a non-finite coordinate gives
// zeros (argmax -1) and no gradient.  y / gy (K, C, oh, ow).

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// Casting a float beyond the range of long long (or a NaN) is undefined; huge RoI
// coordinates (a finite corner times spatial_scale can still overflow to inf in float32) are
// clamped to +-2^40 pixels first, far outside any feature map.
__device__ __forceinline__ long long clamp_to_ll(double v)
{
    const double lim = 1099511627776.0;   // 2^40
    if (v != v) return 0;
    return (long long)(v < -lim ? -lim : (v > lim ? lim : v));
}

// error flag bits (convkit_cuda/roi.py reads the flag once, after the kernel)
#define BAD_INDEX 1ULL   // an argmax outside [-1, H*W)
#define BAD_BATCH 2ULL   // a batch index that is not an integer in [0, N)

// The image of RoI row r, or -1 when r[0] is not an integer in [0, N) (NaN included).
__device__ __forceinline__ long long roi_batch(const scalar_t* r, long long N)
{
    const double b = (double)r[0];
    if (!(b >= 0.0 && b < (double)N && b == floor(b))) return -1;
    return (long long)b;
}

// True when the four coordinates of RoI row r are finite.
__device__ __forceinline__ bool roi_finite(const scalar_t* r)
{
    const double lim = sizeof(scalar_t) == 4 ? 3.4028234663852886e38 : 1.7976931348623157e308;
    for (int j = 1; j < 5; ++j) {
        const double v = (double)r[j];
        if (!(v >= -lim && v <= lim)) return false;
    }
    return true;
}

// Every kernel taking rois runs this over its grid first: it sets *bad for any bad batch
// index, also where no thread of the main loop reads that row.
__device__ __forceinline__ void check_rois(const scalar_t* rois, long long K, long long N,
                                           unsigned long long* bad)
{
    GRID_STRIDE_LOOP(k, K) {
        if (roi_batch(rois + k * 5, N) < 0) atomicOr(bad, BAD_BATCH);
    }
}

// round / floor / ceil of a scalar_t, evaluated in double: the same integer as the float
// overloads (a float converts to double exactly), without relying on them being declared.
__device__ __forceinline__ double round_d(double v) { return round(v); }
__device__ __forceinline__ double floor_d(double v) { return floor(v); }
__device__ __forceinline__ double ceil_d(double v) { return ceil(v); }

// Output element i of a (K, C, oh, ow) RoI result: bin (ph, pw), channel c, RoI row k (r
// points at its five numbers) and the image n it reads -- -1 for a row the op kernels skip
// (a batch index check_rois flags, or a non-finite coordinate: zeros and no gradient).
struct RoiBin {
    long long pw, ph, c, k, n;
    const scalar_t* r;
};

__device__ __forceinline__ RoiBin roi_bin(long long i, const scalar_t* rois, long long N,
                                          long long C, long long oh, long long ow)
{
    RoiBin b;
    b.pw = i % ow;
    b.ph = (i / ow) % oh;
    b.c = (i / (ow * oh)) % C;
    b.k = i / (ow * oh * C);
    b.r = rois + b.k * 5;
    b.n = roi_batch(b.r, N);
    if (b.n >= 0 && !roi_finite(b.r)) b.n = -1;
    return b;
}

// ----------------------------------------------------------------------------- RoI pool

// roi_pool's bin edges [*s, *e) along one axis of RoI r: corners c0, c1 (columns of r) scaled
// and rounded (half away from zero), the box at least 1 cell, bin p of `pooled` spans
// [floor(p * bin), ceil((p + 1) * bin)) cells from the box start, clipped to [0, size].
__device__ __forceinline__ void pool_edges(const scalar_t* r, int c0, int c1, scalar_t scale,
                                           long long pooled, long long size, long long p,
                                           long long* s, long long* e)
{
    const long long start = clamp_to_ll(round_d(r[c0] * scale));
    const long long end = clamp_to_ll(round_d(r[c1] * scale));
    const long long len = end - start + 1 > 1 ? end - start + 1 : 1;
    const scalar_t bin = (scalar_t)len / (scalar_t)pooled;
    long long a = (long long)floor_d((scalar_t)p * bin) + start;
    long long b = (long long)ceil_d((scalar_t)(p + 1) * bin) + start;
    *s = a < 0 ? 0 : (a > size ? size : a);
    *e = b < 0 ? 0 : (b > size ? size : b);
}

// Writes every element of y and argmax (bins by pool_edges).  An empty bin gives 0 and
// argmax -1.  Strict `>` from -FLT_MAX: ties keep the first maximum, NaN is never selected
// (torchvision).
extern "C" __global__ void roi_pool_fwd(
    const scalar_t* x, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, scalar_t* y, long long* argmax,
    unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    GRID_STRIDE_LOOP(i, K * C * oh * ow) {
        const RoiBin b = roi_bin(i, rois, N, C, oh, ow);
        y[i] = 0;
        argmax[i] = -1;
        if (b.n < 0) continue;
        long long hstart, hend, wstart, wend;
        pool_edges(b.r, 2, 4, scale, oh, H, b.ph, &hstart, &hend);
        pool_edges(b.r, 1, 3, scale, ow, W, b.pw, &wstart, &wend);
        if (hend <= hstart || wend <= wstart) continue;
        scalar_t m = (scalar_t)-3.40282346638528859811704183484516925e+38;   // -FLT_MAX
        long long best = -1;
        const scalar_t* xp = x + (b.n * C + b.c) * H * W;
        for (long long h = hstart; h < hend; ++h) {
            for (long long w = wstart; w < wend; ++w) {
                const scalar_t v = xp[h * W + w];
                if (v > m) {
                    m = v;
                    best = h * W + w;
                }
            }
        }
        y[i] = m;
        argmax[i] = best;
    }
}

// RoI pool backward: grad_y is added at argmax through the deterministic csr_* gather in
// pool.cu -- the backward receives no spatial_scale, so the bins cannot be recomputed here.
// keys[i] = (n * C + c) * HW + argmax[i] with n = rois[k, 0] for i = ((k * C + c) * oh + ph)
// * ow + pw; -1 (skipped) for an empty bin (argmax -1).  An argmax outside [-1, HW) or a
// batch index that is not an integer in [0, N) gives -1 and sets the BAD_INDEX / BAD_BATCH bit
// of *bad.  Writes all of keys.
extern "C" __global__ void roi_pool_keys(
    const long long* argmax, const scalar_t* rois, long long K, long long N, long long C,
    long long ohow, long long HW, long long* keys, unsigned long long* bad)
{
    const long long total = K * C * ohow;
    GRID_STRIDE_LOOP(i, total) {
        const long long a = argmax[i];
        const long long kc = i / ohow;
        const long long n = roi_batch(rois + (kc / C) * 5, N);
        if (n < 0) {
            atomicOr(bad, BAD_BATCH);
            keys[i] = -1;
        } else if (a < -1 || a >= HW) {
            atomicOr(bad, BAD_INDEX);
            keys[i] = -1;
        } else {
            keys[i] = a < 0 ? -1 : (n * C + kc % C) * HW + a;
        }
    }
}

// ---------------------------------------------------------------------------- RoI align

struct AlignGeom {
    scalar_t y0, x0;          // box start (scaled, minus 0.5 when aligned)
    scalar_t bin_h, bin_w;
    long long gh, gw;         // sampling grid per bin
    scalar_t count;           // max(gh * gw, 1)
};

__device__ __forceinline__ AlignGeom align_geom(const scalar_t* r, long long oh, long long ow,
                                                scalar_t scale, long long sampling_ratio,
                                                long long aligned)
{
    AlignGeom g;
    const scalar_t off = aligned ? (scalar_t)0.5 : (scalar_t)0;
    g.x0 = r[1] * scale - off;
    g.y0 = r[2] * scale - off;
    scalar_t rw = r[3] * scale - off - g.x0;
    scalar_t rh = r[4] * scale - off - g.y0;
    if (!aligned) {   // legacy mode: a RoI is at least 1x1
        rw = rw > (scalar_t)1 ? rw : (scalar_t)1;
        rh = rh > (scalar_t)1 ? rh : (scalar_t)1;
    }
    g.bin_h = rh / (scalar_t)oh;
    g.bin_w = rw / (scalar_t)ow;
    // adaptive grid: ceil(bin size) points per axis; clamped so the cast and the product
    // below stay defined for absurd sizes (sample_range keeps the work bounded anyway)
    const scalar_t lim = (scalar_t)1073741824.0;   // 2^30
    const scalar_t sr = (scalar_t)sampling_ratio;
    scalar_t fh = sampling_ratio > 0 ? sr : (scalar_t)ceil_d(rh / (scalar_t)oh);
    scalar_t fw = sampling_ratio > 0 ? sr : (scalar_t)ceil_d(rw / (scalar_t)ow);
    fh = fh != fh ? (scalar_t)0 : (fh < -lim ? -lim : (fh > lim ? lim : fh));
    fw = fw != fw ? (scalar_t)0 : (fw < -lim ? -lim : (fw > lim ? lim : fw));
    g.gh = (long long)fh;
    g.gw = (long long)fw;
    const long long cnt = g.gh * g.gw;
    g.count = (scalar_t)(cnt > 1 ? cnt : 1);
    return g;
}

// Sample i of n in a bin lies at base + (i + 0.5) * bin / n (base = box start + bin index *
// bin).  Sets [*i0, *i1) to a superset of the samples whose coordinate can fall in [lo, hi]
// (with a margin for rounding: `mag` bounds the magnitude of the terms), so samples that
// cannot touch the feature map -- or, for the gather backward, the pixel -- are skipped and
// a huge RoI costs time in proportion to its part over the map, never a hang.  Skipped
// samples contribute exactly 0.  When bin == 0 all n samples coincide: visit one, *rep = n.
// A non-finite base or bin (overflow of huge coordinates) gives no samples: bilinear() would
// reject every one of them anyway.
__device__ __forceinline__ void sample_range(scalar_t base, scalar_t bin, long long n,
                                             double lo, double hi, double mag,
                                             long long* i0, long long* i1, long long* rep)
{
    *rep = 1;
    *i0 = 0;
    *i1 = 0;
    const double inf = __longlong_as_double(0x7ff0000000000000ULL);
    const double db = (double)base, dbin = (double)bin;
    if (n <= 0 || !(db > -inf && db < inf) || !(dbin > -inf && dbin < inf)) return;
    const double step = dbin / (double)n;
    if (step == 0.0) {
        *i1 = 1;
        *rep = n;
        return;
    }
    double a = (lo - db) / step - 0.5, b = (hi - db) / step - 0.5;
    if (a > b) {
        const double tmp = a;
        a = b;
        b = tmp;
    }
    const double eps = sizeof(scalar_t) == 4 ? 1e-6 : 1e-14;
    const double abs_step = step < 0 ? -step : step;
    const double margin = 2.0 + eps * (mag + (lo < 0 ? -lo : lo) + (hi < 0 ? -hi : hi)) / abs_step;
    double s = floor(a - margin), e = ceil(b + margin) + 1.0;
    s = s > 0.0 ? s : 0.0;                          // NaN -> 0: the full range, still correct
    e = e < (double)n ? e : (double)n;              // NaN -> n
    if (e < s) e = s;
    *i0 = (long long)s;
    *i1 = (long long)e;
}

// Bilinear weights of the four neighbours of (y, x), torchvision's rules: a sample more than
// one pixel outside the map gives false (weight 0); coordinates in [-1, 0] are clamped to 0;
// at the last row/column both neighbours are the edge.  Written so that a NaN coordinate
// gives false too (never an index computed from a NaN).
__device__ __forceinline__ bool bilinear(long long H, long long W, scalar_t y, scalar_t x,
                                         scalar_t* w, long long* yl, long long* yh,
                                         long long* xl, long long* xh)
{
    if (!(y >= (scalar_t)-1.0 && y <= (scalar_t)H && x >= (scalar_t)-1.0 && x <= (scalar_t)W))
        return false;
    if (y <= 0) y = 0;
    if (x <= 0) x = 0;
    *yl = (long long)y;
    *xl = (long long)x;
    if (*yl >= H - 1) {
        *yh = *yl = H - 1;
        y = (scalar_t)*yl;
    } else {
        *yh = *yl + 1;
    }
    if (*xl >= W - 1) {
        *xh = *xl = W - 1;
        x = (scalar_t)*xl;
    } else {
        *xh = *xl + 1;
    }
    const scalar_t ly = y - (scalar_t)*yl, lx = x - (scalar_t)*xl;
    const scalar_t hy = (scalar_t)1 - ly, hx = (scalar_t)1 - lx;
    w[0] = hy * hx;
    w[1] = hy * lx;
    w[2] = ly * hx;
    w[3] = ly * lx;
    return true;
}

__device__ __forceinline__ double absd(double v) { return v < 0 ? -v : v; }

// Sample i of n along one axis of a bin: base + ((i + 0.5) * bin) / n (torchvision's order).
__device__ __forceinline__ scalar_t sample_pos(scalar_t base, scalar_t bin, long long i,
                                               long long n)
{
    return base + ((scalar_t)i + (scalar_t)0.5) * bin / (scalar_t)n;
}

// The samples of one bilinear bin that a kernel visits: the bin starts at (ybase, xbase), is
// bh x bw, holds a gh x gw grid; [iy0, iy1) x [ix0, ix1) by sample_range, rep coinciding
// samples folded into each.  RoI align, max align and the ps-RoI align ops all use it.
struct SampleWin {
    scalar_t ybase, xbase, bh, bw;
    long long gh, gw, iy0, iy1, ix0, ix1, rep;
};

// The window of the samples that can land in [ylo, yhi] x [xlo, xhi]; ymag / xmag bound the
// magnitude of the terms of a coordinate (sample_range's margin).
__device__ __forceinline__ SampleWin sample_win(scalar_t ybase, scalar_t bh, long long gh,
                                                scalar_t xbase, scalar_t bw, long long gw,
                                                double ylo, double yhi, double ymag,
                                                double xlo, double xhi, double xmag)
{
    SampleWin s;
    s.ybase = ybase;
    s.xbase = xbase;
    s.bh = bh;
    s.bw = bw;
    s.gh = gh;
    s.gw = gw;
    long long ry, rx;
    sample_range(ybase, bh, gh, ylo, yhi, ymag, &s.iy0, &s.iy1, &ry);
    sample_range(xbase, bw, gw, xlo, xhi, xmag, &s.ix0, &s.ix1, &rx);
    s.rep = ry * rx;
    return s;
}

// Bin (ph, pw) of RoI geometry g: the samples that can land on the H x W map.
__device__ __forceinline__ SampleWin align_win(const AlignGeom& g, long long ph, long long pw,
                                               long long H, long long W)
{
    return sample_win(g.y0 + (scalar_t)ph * g.bin_h, g.bin_h, g.gh,
                      g.x0 + (scalar_t)pw * g.bin_w, g.bin_w, g.gw,
                      -1.0, (double)H, absd(g.y0) + absd((double)ph * g.bin_h) + absd(g.bin_h),
                      -1.0, (double)W, absd(g.x0) + absd((double)pw * g.bin_w) + absd(g.bin_w));
}

// Sample (iy, ix) of window s: its four neighbours and weights, false when off the map.
__device__ __forceinline__ bool win_sample(const SampleWin& s, long long H, long long W,
                                           long long iy, long long ix, scalar_t* w,
                                           long long* yl, long long* yh, long long* xl,
                                           long long* xh)
{
    return bilinear(H, W, sample_pos(s.ybase, s.bh, iy, s.gh), sample_pos(s.xbase, s.bw, ix, s.gw),
                    w, yl, yh, xl, xh);
}

// *v = the bilinear value of plane xp at sample (iy, ix) of window s; false when off the map.
__device__ __forceinline__ bool win_value(const SampleWin& s, const scalar_t* xp, long long H,
                                          long long W, long long iy, long long ix, scalar_t* v)
{
    scalar_t w[4];
    long long yl, yh, xl, xh;
    if (!win_sample(s, H, W, iy, ix, w, &yl, &yh, &xl, &xh)) return false;
    *v = w[0] * xp[yl * W + xl] + w[1] * xp[yl * W + xh] + w[2] * xp[yh * W + xl]
         + w[3] * xp[yh * W + xh];
    return true;
}

// Sum of the bilinear values of plane xp at the window's samples (each rep times), row-major.
__device__ __forceinline__ scalar_t win_sum(const SampleWin& s, const scalar_t* xp, long long H,
                                            long long W)
{
    const scalar_t rep = (scalar_t)s.rep;
    scalar_t acc = 0;
    for (long long iy = s.iy0; iy < s.iy1; ++iy) {
        for (long long ix = s.ix0; ix < s.ix1; ++ix) {
            scalar_t v;
            if (win_value(s, xp, H, W, iy, ix, &v)) acc += rep == (scalar_t)1 ? v : rep * v;
        }
    }
    return acc;
}

// win_sum's gradient by scatter: adds rep * (g * weight / count) to the four neighbours of
// every sample with atomicAdd (the order of additions into one element varies between runs).
__device__ __forceinline__ void win_scatter(const SampleWin& s, scalar_t* gp, long long H,
                                            long long W, scalar_t g, scalar_t count)
{
    const scalar_t rep = (scalar_t)s.rep;
    for (long long iy = s.iy0; iy < s.iy1; ++iy) {
        for (long long ix = s.ix0; ix < s.ix1; ++ix) {
            scalar_t w[4];
            long long yl, yh, xl, xh;
            if (!win_sample(s, H, W, iy, ix, w, &yl, &yh, &xl, &xh)) continue;
            atomicAdd(gp + yl * W + xl, rep * (g * w[0] / count));
            atomicAdd(gp + yl * W + xh, rep * (g * w[1] / count));
            atomicAdd(gp + yh * W + xl, rep * (g * w[2] / count));
            atomicAdd(gp + yh * W + xh, rep * (g * w[3] / count));
        }
    }
}

// The terms win_scatter adds into pixel (h, w), summed onto acc in its order (the gathers).
__device__ __forceinline__ scalar_t win_gather(const SampleWin& s, long long h, long long w,
                                               long long H, long long W, scalar_t g,
                                               scalar_t count, scalar_t acc)
{
    const scalar_t rep = (scalar_t)s.rep;
    for (long long iy = s.iy0; iy < s.iy1; ++iy) {
        for (long long ix = s.ix0; ix < s.ix1; ++ix) {
            scalar_t wt[4];
            long long yl, yh, xl, xh;
            if (!win_sample(s, H, W, iy, ix, wt, &yl, &yh, &xl, &xh)) continue;
            if (yl == h && xl == w) acc += rep * (g * wt[0] / count);
            if (yl == h && xh == w) acc += rep * (g * wt[1] / count);
            if (yh == h && xl == w) acc += rep * (g * wt[2] / count);
            if (yh == h && xh == w) acc += rep * (g * wt[3] / count);
        }
    }
    return acc;
}

// Writes every element of y: the mean of the bilinear samples of each bin.
extern "C" __global__ void roi_align_fwd(
    const scalar_t* x, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, long long sampling_ratio,
    long long aligned, scalar_t* y, unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    GRID_STRIDE_LOOP(i, K * C * oh * ow) {
        const RoiBin b = roi_bin(i, rois, N, C, oh, ow);
        y[i] = 0;
        if (b.n < 0) continue;
        const AlignGeom g = align_geom(b.r, oh, ow, scale, sampling_ratio, aligned);
        y[i] = win_sum(align_win(g, b.ph, b.pw, H, W), x + (b.n * C + b.c) * H * W, H, W)
               / g.count;
    }
}

// Gradient of roi_align_fwd by scatter: one thread per element of gy adds its share to the
// four neighbours of every sample with atomicAdd into gx (zero-filled by the caller).  The
// order of the additions into one element of gx varies between runs: not bit-reproducible.
extern "C" __global__ void roi_align_bwd_atomic(
    const scalar_t* gy, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, long long sampling_ratio,
    long long aligned, scalar_t* gx, unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    GRID_STRIDE_LOOP(i, K * C * oh * ow) {
        const RoiBin b = roi_bin(i, rois, N, C, oh, ow);
        if (b.n < 0) continue;
        const AlignGeom g = align_geom(b.r, oh, ow, scale, sampling_ratio, aligned);
        win_scatter(align_win(g, b.ph, b.pw, H, W), gx + (b.n * C + b.c) * H * W, H, W, gy[i],
                    g.count);
    }
}

// Cheap rejection: every sample of a RoI along one axis lies between start and
// start + n * bin; false when none can come within reach of [lo, hi].  A NaN passes.
__device__ __forceinline__ bool span_may_touch(double start, scalar_t bin, long long n,
                                               double lo, double hi)
{
    const double end = start + (double)n * bin;
    const double slack = 2.0 + 1e-5 * (absd(start) + absd(end));
    const double mn = start < end ? start : end, mx = start < end ? end : start;
    return !(hi < mn - slack || lo > mx + slack);
}

// The RoI index of the deterministic gather: bucket b = n * ntiles + t lists, in increasing
// k, the valid finite RoIs of image n whose rows can touch row tile t (rows [t * tile,
// t * tile + tile) clipped to H) -- a superset of those roi_align_bwd_gather would not reject
// for any row of the tile, so it adds the same terms in the same order.  One thread per
// bucket.  fill = 0: counts[b] = its size; fill = 1: members[ends[b - 1] .. ends[b]) = its
// RoIs, with ends the inclusive prefix sum of counts.
extern "C" __global__ void roi_align_buckets(
    const scalar_t* rois, long long K, long long N, long long H, long long oh, long long ow,
    scalar_t scale, long long sampling_ratio, long long aligned, long long tile,
    long long ntiles, long long fill, long long* ends, long long* members)
{
    GRID_STRIDE_LOOP(b, N * ntiles) {
        const long long n = b / ntiles, t0 = (b % ntiles) * tile;
        const long long t1 = t0 + tile < H ? t0 + tile : H;
        // a row h of the tile tests [h - 2, h + 1], inside [t0 - 2, t1]
        const double ylo = (double)t0 - 2.0, yhi = (double)t1;
        long long j = fill && b ? ends[b - 1] : 0;
        for (long long k = 0; k < K; ++k) {
            const scalar_t* r = rois + k * 5;
            if (roi_batch(r, N) != n || !roi_finite(r)) continue;
            const AlignGeom g = align_geom(r, oh, ow, scale, sampling_ratio, aligned);
            if (!span_may_touch((double)g.y0, g.bin_h, oh, ylo, yhi)) continue;
            if (fill) members[j] = k;
            ++j;
        }
        if (!fill) ends[b] = j;
    }
}

// Deterministic gradient of roi_align_fwd by gather: one thread per element (n, c, h, w) of
// gx visits the RoIs of its bucket (image n, the row tile of h; see roi_align_buckets) in
// order, and within a RoI only the bins and samples whose coordinates can touch row h /
// column w (within one pixel), adding the same terms as the atomic kernel in a fixed order.
// Same bits every run, and the same as visiting every RoI of image n.  Writes all of gx.
extern "C" __global__ void roi_align_bwd_gather(
    const scalar_t* gy, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, long long sampling_ratio,
    long long aligned, long long tile, long long ntiles, const long long* ends,
    const long long* members, scalar_t* gx, unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    const long long total = N * C * H * W;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long w = t % W; t /= W;
        const long long h = t % H; t /= H;
        const long long c = t % C;
        const long long n = t / C;
        // a sample touches row h when its coordinate is in [h - 1, h + 1]; from [h - 2, h - 1)
        // only as the zero-weight neighbour of a coordinate in [-1, 0) clamped to 0 (h = 1),
        // which the atomic kernel adds too (it matters only for a non-finite gy)
        const double ylo = (double)h - 2.0, yhi = (double)h + 1.0;
        const double xlo = (double)w - 2.0, xhi = (double)w + 1.0;
        scalar_t acc = 0;
        const long long bucket = n * ntiles + h / tile;
        const long long j1 = ends[bucket];
        for (long long j = bucket ? ends[bucket - 1] : 0; j < j1; ++j) {
            const long long k = members[j];
            const scalar_t* r = rois + k * 5;
            const AlignGeom g = align_geom(r, oh, ow, scale, sampling_ratio, aligned);
            if (!span_may_touch((double)g.y0, g.bin_h, oh, ylo, yhi)) continue;
            if (!span_may_touch((double)g.x0, g.bin_w, ow, xlo, xhi)) continue;
            const scalar_t* gp = gy + (k * C + c) * oh * ow;
            for (long long ph = 0; ph < oh; ++ph) {
                const scalar_t ybase = g.y0 + (scalar_t)ph * g.bin_h;
                const double ymag = absd(g.y0) + absd((double)ph * g.bin_h) + absd(g.bin_h);
                long long iy0, iy1, ry;      // skip a row of bins before its columns
                sample_range(ybase, g.bin_h, g.gh, ylo, yhi, ymag, &iy0, &iy1, &ry);
                if (iy0 >= iy1) continue;
                for (long long pw = 0; pw < ow; ++pw) {
                    const SampleWin s = sample_win(
                        ybase, g.bin_h, g.gh, g.x0 + (scalar_t)pw * g.bin_w, g.bin_w, g.gw, ylo,
                        yhi, ymag, xlo, xhi,
                        absd(g.x0) + absd((double)pw * g.bin_w) + absd(g.bin_w));
                    if (s.ix0 >= s.ix1) continue;
                    acc = win_gather(s, h, w, H, W, gp[ph * ow + pw], g.count, acc);
                }
            }
        }
        gx[i] = acc;
    }
}
