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

// roi_pool's bin edges [*s, *e) along one axis of RoI r (as roi_pool_fwd computes them):
// corners c0, c1 (columns of r) scaled and rounded, at least 1 cell, bin p of `pooled`,
// clipped to [0, size].
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

// ------------------------------------------------------------------------------ roi_avg_pool

// Writes every element of y: the mean of the bin's pixels (summed row-major), 0 when empty.
extern "C" __global__ void roi_avg_pool_fwd(
    const scalar_t* x, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, scalar_t* y,
    unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    const long long total = K * C * oh * ow;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long pw = t % ow; t /= ow;
        const long long ph = t % oh; t /= oh;
        const long long c = t % C;
        const long long k = t / C;
        const scalar_t* r = rois + k * 5;
        const long long n = roi_batch(r, N);
        y[i] = 0;
        if (n < 0 || !roi_finite(r)) continue;
        long long hs, he, ws, we;
        pool_edges(r, 2, 4, scale, oh, H, ph, &hs, &he);
        pool_edges(r, 1, 3, scale, ow, W, pw, &ws, &we);
        if (he <= hs || we <= ws) continue;
        const scalar_t* xp = x + (n * C + c) * H * W;
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

// The sample window of bin (ph, pw) of RoI r: geometry g, and [*iy0, *iy1) x [*ix0, *ix1) the
// samples that can land on the map (roi_align_fwd's window; coinciding samples are sample 0).
// False for a grid too large to number (BAD_GRID).
__device__ __forceinline__ bool max_align_window(
    const scalar_t* r, long long H, long long W, long long oh, long long ow, long long ph,
    long long pw, scalar_t scale, long long sampling_ratio, long long aligned, AlignGeom* g,
    long long* iy0, long long* iy1, long long* ix0, long long* ix1)
{
    *g = align_geom(r, oh, ow, scale, sampling_ratio, aligned);
    if (sampling_ratio <= 0 && !((double)ceil_d(g->bin_h) <= MAX_GRID
                                 && (double)ceil_d(g->bin_w) <= MAX_GRID
                                 && (double)ceil_d(g->bin_h) * (double)ceil_d(g->bin_w)
                                        <= MAX_SAMPLES))
        return false;
    long long ry, rx;
    sample_range(g->y0 + (scalar_t)ph * g->bin_h, g->bin_h, g->gh, -1.0, (double)H,
                 absd(g->y0) + absd((double)ph * g->bin_h) + absd(g->bin_h), iy0, iy1, &ry);
    sample_range(g->x0 + (scalar_t)pw * g->bin_w, g->bin_w, g->gw, -1.0, (double)W,
                 absd(g->x0) + absd((double)pw * g->bin_w) + absd(g->bin_w), ix0, ix1, &rx);
    return true;
}

// Sample (iy, ix) of bin (ph, pw): its four neighbours and weights, false when off the map.
__device__ __forceinline__ bool max_align_sample(
    const AlignGeom& g, long long H, long long W, long long ph, long long pw, long long iy,
    long long ix, scalar_t* w, long long* yl, long long* yh, long long* xl, long long* xh)
{
    const scalar_t ybase = g.y0 + (scalar_t)ph * g.bin_h;
    const scalar_t xbase = g.x0 + (scalar_t)pw * g.bin_w;
    const scalar_t yy = ybase + ((scalar_t)iy + (scalar_t)0.5) * g.bin_h / (scalar_t)g.gh;
    const scalar_t xx = xbase + ((scalar_t)ix + (scalar_t)0.5) * g.bin_w / (scalar_t)g.gw;
    return bilinear(H, W, yy, xx, w, yl, yh, xl, xh);
}

// Writes every element of y and argmax: the max over the bin's valid samples (greater or NaN
// replaces, so ties keep the first in row-major order and NaN wins), argmax iy * gw + ix
// (int32);
// a bin without a valid sample gives 0 and -1.
extern "C" __global__ void roi_max_align_fwd(
    const scalar_t* x, const scalar_t* rois, long long K, long long N, long long C, long long H,
    long long W, long long oh, long long ow, scalar_t scale, long long sampling_ratio,
    long long aligned, scalar_t* y, int* argmax, unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    const long long total = K * C * oh * ow;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long pw = t % ow; t /= ow;
        const long long ph = t % oh; t /= oh;
        const long long c = t % C;
        const long long k = t / C;
        const scalar_t* r = rois + k * 5;
        const long long n = roi_batch(r, N);
        y[i] = 0;
        argmax[i] = -1;
        if (n < 0 || !roi_finite(r)) continue;
        AlignGeom g;
        long long iy0, iy1, ix0, ix1;
        if (!max_align_window(r, H, W, oh, ow, ph, pw, scale, sampling_ratio, aligned, &g, &iy0,
                              &iy1, &ix0, &ix1)) {
            atomicOr(bad, BAD_GRID);
            continue;
        }
        const scalar_t* xp = x + (n * C + c) * H * W;
        scalar_t best = 0;
        long long won = -1;
        for (long long iy = iy0; iy < iy1; ++iy) {
            for (long long ix = ix0; ix < ix1; ++ix) {
                scalar_t w[4];
                long long yl, yh, xl, xh;
                if (!max_align_sample(g, H, W, ph, pw, iy, ix, w, &yl, &yh, &xl, &xh)) continue;
                const scalar_t v = w[0] * xp[yl * W + xl] + w[1] * xp[yl * W + xh]
                                 + w[2] * xp[yh * W + xl] + w[3] * xp[yh * W + xh];
                if (won < 0 || v > best || v != v) {
                    best = v;
                    won = iy * g.gw + ix;
                }
            }
        }
        if (won >= 0) {
            y[i] = best;
            argmax[i] = (int)won;     // < gh*gw <= MAX_SAMPLES
        }
    }
}

// Keys and values of the backward gather (convkit_cuda.pool.gather_add): element j of gy
// gives entries 4j..4j+3, the winning sample's four neighbours (key (n*C + c)*H*W + pixel) and
// gy[j] times their weights; -1 keys for argmax -1, a non-finite RoI or a bad entry.  An argmax
// that is neither -1 nor a valid sample of its bin sets BAD_INDEX.
extern "C" __global__ void roi_max_align_keys(
    const scalar_t* gy, const int* argmax, const scalar_t* rois, long long K, long long N,
    long long C, long long H, long long W, long long oh, long long ow, scalar_t scale,
    long long sampling_ratio, long long aligned, long long* keys, scalar_t* vals,
    unsigned long long* bad)
{
    check_rois(rois, K, N, bad);
    const long long total = K * C * oh * ow;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long pw = t % ow; t /= ow;
        const long long ph = t % oh; t /= oh;
        const long long c = t % C;
        const long long k = t / C;
        for (int j = 0; j < 4; ++j) {
            keys[4 * i + j] = -1;
            vals[4 * i + j] = 0;
        }
        const long long a = argmax[i];            // read once
        const scalar_t* r = rois + k * 5;
        const long long n = roi_batch(r, N);
        if (a == -1 || n < 0 || !roi_finite(r)) continue;
        AlignGeom g;
        long long iy0, iy1, ix0, ix1;
        if (!max_align_window(r, H, W, oh, ow, ph, pw, scale, sampling_ratio, aligned, &g, &iy0,
                              &iy1, &ix0, &ix1)) {
            atomicOr(bad, BAD_GRID);
            continue;
        }
        const long long iy = g.gw >= 1 && a >= 0 ? a / g.gw : -1;
        const long long ix = g.gw >= 1 && a >= 0 ? a % g.gw : -1;
        scalar_t w[4];
        long long yl, yh, xl, xh;
        if (iy < iy0 || iy >= iy1 || ix < ix0 || ix >= ix1
            || !max_align_sample(g, H, W, ph, pw, iy, ix, w, &yl, &yh, &xl, &xh)) {
            atomicOr(bad, BAD_INDEX);
            continue;
        }
        const long long plane = (n * C + c) * H * W;
        const long long px[4] = {yl * W + xl, yl * W + xh, yh * W + xl, yh * W + xh};
        for (int j = 0; j < 4; ++j) {
            keys[4 * i + j] = plane + px[j];
            vals[4 * i + j] = gy[i] * w[j];
        }
    }
}
