// roi_avg_pool and roi_max_align, the lecture's other two RoI aggregators (rules in
// convkit/reference/roi_variants.py): roi_pool's bins with the mean, roi_align's bilinear
// samples with the max.  The RoI checks, the align geometry, the sample window and the
// bilinear rule are roi.cu's (its device helpers are included, not its kernels).  rois arrive
// unchecked as for roi.cu: a bad batch index sets BAD_BATCH, a non-finite coordinate gives
// zeros (argmax -1) and no gradient.  Backwards are gathers (no atomics): the same bits every
// run, and the additions into each input element in the cpu backend's order.
#include "roi.cu"

#define BAD_GRID 4ULL    // an adaptive sampling grid over MAX_GRID points on an axis, or
                         // over MAX_SAMPLES per bin (argmax numbers them in int32)
#define MAX_GRID 1073741824.0
#define MAX_SAMPLES 2147483648.0

// ------------------------------------------------------------------------------ roi_avg_pool

// Writes every element of y: the mean of the bin's pixels (summed row-major), 0 when empty.
extern "C" __global__ void roi_avg_pool_fwd(
    const scalar_t* x, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, scalar_t* y,
    unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    GRID_STRIDE_LOOP(i, K * C * oh * ow) {
        const RoiBin b = roi_bin(i, rois, N, C, oh, ow);
        y[i] = 0;
        if (b.n < 0) continue;
        long long hs, he, ws, we;
        pool_edges(b.r, 2, 4, scale, oh, H, b.ph, &hs, &he);
        pool_edges(b.r, 1, 3, scale, ow, W, b.pw, &ws, &we);
        if (he <= hs || we <= ws) continue;
        const scalar_t* xp = x + (b.n * C + b.c) * H * W;
        scalar_t acc = 0;
        for (long long h = hs; h < he; ++h)
            for (long long w = ws; w < we; ++w) acc = acc + xp[h * W + w];
        y[i] = acc / (scalar_t)((he - hs) * (we - ws));
    }
}

// The bins of every RoI for the backward gather: bins[k] = hs[oh], he[oh], ws[ow], we[ow];
// batch[k] = its image, or -1 (bad batch index: BAD_BATCH; non-finite coordinate: no gradient).
extern "C" __global__ void roi_avg_pool_bins(
    const scalar_t* rois, long long K, long long N, long long H, long long W, long long oh,
    long long ow, scalar_t scale, long long* bins, long long* batch, unsigned long long* bad)
{
    const long long ne = 2 * (oh + ow);
    GRID_STRIDE_LOOP(k, K) {
        const scalar_t* r = rois + k * 5;
        long long n = roi_batch(r, N);
        if (n < 0) atomicOr(bad, BAD_BATCH);
        if (!roi_finite(r)) n = -1;
        batch[k] = n;
        long long* e = bins + k * ne;
        for (long long p = 0; p < oh; ++p) pool_edges(r, 2, 4, scale, oh, H, p, e + p, e + oh + p);
        for (long long q = 0; q < ow; ++q)
            pool_edges(r, 1, 3, scale, ow, W, q, e + 2 * oh + q, e + 2 * oh + ow + q);
    }
}

// One thread per element of gx: grad / count of every bin (RoIs of its image in order, bins
// row-major) that holds the element.
extern "C" __global__ void roi_avg_pool_bwd_gather(
    const scalar_t* gy, const long long* bins, const long long* batch, long long K, long long N,
    long long C, long long H, long long W, long long oh, long long ow, scalar_t* gx)
{
    const long long total = N * C * H * W, ne = 2 * (oh + ow);
    GRID_STRIDE_LOOP(i, total) {
        const long long w = i % W;
        const long long h = (i / W) % H;
        const long long c = (i / (H * W)) % C;
        const long long n = i / (C * H * W);
        scalar_t acc = 0;
        for (long long k = 0; k < K; ++k) {
            if (batch[k] != n) continue;
            const long long* e = bins + k * ne;
            if (h < e[0] || h >= e[2 * oh - 1] || w < e[2 * oh] || w >= e[2 * oh + 2 * ow - 1])
                continue;                          // outside the RoI's bins (they are monotone)
            const scalar_t* g = gy + (k * C + c) * oh * ow;
            for (long long p = 0; p < oh; ++p) {
                if (h < e[p] || h >= e[oh + p]) continue;
                for (long long q = 0; q < ow; ++q) {
                    const long long ws = e[2 * oh + q], we = e[2 * oh + ow + q];
                    if (w < ws || w >= we) continue;
                    acc = acc + g[p * ow + q] / (scalar_t)((e[oh + p] - e[p]) * (we - ws));
                }
            }
        }
        gx[i] = acc;
    }
}

// ----------------------------------------------------------------------------- roi_max_align

// The geometry of RoI r and the sample window of its bin (ph, pw) (roi_align_fwd's: coinciding
// samples are sample 0).  False for a grid too large to number (BAD_GRID).
__device__ __forceinline__ bool max_align_window(
    const scalar_t* r, long long H, long long W, long long oh, long long ow, long long ph,
    long long pw, scalar_t scale, long long sampling_ratio, long long aligned, AlignGeom* g,
    SampleWin* s)
{
    *g = align_geom(r, oh, ow, scale, sampling_ratio, aligned);
    if (sampling_ratio <= 0 && !((double)ceil_d(g->bin_h) <= MAX_GRID
                                 && (double)ceil_d(g->bin_w) <= MAX_GRID
                                 && (double)ceil_d(g->bin_h) * (double)ceil_d(g->bin_w)
                                        <= MAX_SAMPLES))
        return false;
    *s = align_win(*g, ph, pw, H, W);
    return true;
}

// Output element i of roi_max_align: writes y[i], the max over the bin's valid samples
// (greater or NaN replaces, so ties keep the first in row-major order and NaN wins), and
// returns the winner's number iy * gw + ix; a bin without a valid sample gives 0 and -1.
// The kernels below store that number in their argmax's type, int32 or int8 (signed char,
// for sampling_ratio 1..11: reference.roi_variants.argmax_dtype): one body for both.
__device__ long long max_align_elem(
    const scalar_t* x, const scalar_t* rois, long long N, long long C, long long H, long long W,
    long long oh, long long ow, scalar_t scale, long long sampling_ratio, long long aligned,
    long long i, scalar_t* y, unsigned long long* bad)
{
    const RoiBin b = roi_bin(i, rois, N, C, oh, ow);
    y[i] = 0;
    if (b.n < 0) return -1;
    AlignGeom g;
    SampleWin s;
    if (!max_align_window(b.r, H, W, oh, ow, b.ph, b.pw, scale, sampling_ratio, aligned, &g,
                          &s)) {
        atomicOr(bad, BAD_GRID);
        return -1;
    }
    const scalar_t* xp = x + (b.n * C + b.c) * H * W;
    scalar_t best = 0;
    long long won = -1;
    for (long long iy = s.iy0; iy < s.iy1; ++iy) {
        for (long long ix = s.ix0; ix < s.ix1; ++ix) {
            scalar_t v;
            if (!win_value(s, xp, H, W, iy, ix, &v)) continue;
            if (won < 0 || v > best || v != v) {
                best = v;
                won = iy * g.gw + ix;
            }
        }
    }
    if (won >= 0) y[i] = best;
    return won;       // < gh*gw: <= MAX_SAMPLES, and <= 120 where argmax is int8
}

extern "C" __global__ void roi_max_align_fwd(
    const scalar_t* x, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, long long sampling_ratio,
    long long aligned, scalar_t* y, int* argmax, unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    GRID_STRIDE_LOOP(i, K * C * oh * ow) {
        argmax[i] = (int)max_align_elem(x, rois, N, C, H, W, oh, ow, scale, sampling_ratio,
                                        aligned, i, y, bad);
    }
}

extern "C" __global__ void roi_max_align_fwd_i8(
    const scalar_t* x, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, long long sampling_ratio,
    long long aligned, scalar_t* y, signed char* argmax, unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    GRID_STRIDE_LOOP(i, K * C * oh * ow) {
        argmax[i] = (signed char)max_align_elem(x, rois, N, C, H, W, oh, ow, scale,
                                                sampling_ratio, aligned, i, y, bad);
    }
}

// Keys and values of the backward gather (convkit_cuda.pool.gather_add) for element i of gy
// with argmax entry a (read once by the kernel): entries 4i..4i+3, the winning sample's four
// neighbours (key (n*C + c)*H*W + pixel) and gy[i] times their weights; -1 keys for argmax
// -1, a non-finite RoI or a bad entry.  An argmax that is neither -1 nor a valid sample of
// its bin sets BAD_INDEX.  The kernels below read an int32 or an int8 argmax.
__device__ void max_align_keys(
    const scalar_t* gy, long long a, const scalar_t* rois, long long N, long long C,
    long long H, long long W, long long oh, long long ow, scalar_t scale,
    long long sampling_ratio, long long aligned, long long i, long long* keys, scalar_t* vals,
    unsigned long long* bad)
{
    for (int j = 0; j < 4; ++j) {
        keys[4 * i + j] = -1;
        vals[4 * i + j] = 0;
    }
    const RoiBin b = roi_bin(i, rois, N, C, oh, ow);
    if (a == -1 || b.n < 0) return;
    AlignGeom g;
    SampleWin s;
    if (!max_align_window(b.r, H, W, oh, ow, b.ph, b.pw, scale, sampling_ratio, aligned, &g,
                          &s)) {
        atomicOr(bad, BAD_GRID);
        return;
    }
    const long long iy = g.gw >= 1 && a >= 0 ? a / g.gw : -1;
    const long long ix = g.gw >= 1 && a >= 0 ? a % g.gw : -1;
    scalar_t w[4];
    long long yl, yh, xl, xh;
    if (iy < s.iy0 || iy >= s.iy1 || ix < s.ix0 || ix >= s.ix1
        || !win_sample(s, H, W, iy, ix, w, &yl, &yh, &xl, &xh)) {
        atomicOr(bad, BAD_INDEX);
        return;
    }
    const long long plane = (b.n * C + b.c) * H * W;
    const long long px[4] = {yl * W + xl, yl * W + xh, yh * W + xl, yh * W + xh};
    for (int j = 0; j < 4; ++j) {
        keys[4 * i + j] = plane + px[j];
        vals[4 * i + j] = gy[i] * w[j];
    }
}

extern "C" __global__ void roi_max_align_keys(
    const scalar_t* gy, const int* argmax, const scalar_t* rois, long long K, long long N,
    long long C, long long H, long long W, long long oh, long long ow, scalar_t scale,
    long long sampling_ratio, long long aligned, long long* keys, scalar_t* vals,
    unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    GRID_STRIDE_LOOP(i, K * C * oh * ow) {
        max_align_keys(gy, argmax[i], rois, N, C, H, W, oh, ow, scale, sampling_ratio, aligned,
                       i, keys, vals, bad);
    }
}

extern "C" __global__ void roi_max_align_keys_i8(
    const scalar_t* gy, const signed char* argmax, const scalar_t* rois, long long K,
    long long N, long long C, long long H, long long W, long long oh, long long ow,
    scalar_t scale, long long sampling_ratio, long long aligned, long long* keys,
    scalar_t* vals, unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    GRID_STRIDE_LOOP(i, K * C * oh * ow) {
        max_align_keys(gy, argmax[i], rois, N, C, H, W, oh, ow, scale, sampling_ratio, aligned,
                       i, keys, vals, bad);
    }
}
