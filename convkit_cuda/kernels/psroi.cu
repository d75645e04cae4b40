// Position-sensitive RoI align and RoI pool (R-FCN), compiled once per dtype (`typedef
// float|double scalar_t;` is prepended, kernel names get _f32 / _f64).  Semantics are
// torchvision's ps_roi_align / ps_roi_pool kernels, restated in convkit/reference/psroi.py:
// bin (ph, pw) of output channel c reads input channel (c * oh + ph) * ow + pw only.
//
// x (N, C, H, W) with C = C_out * oh * ow; y / gy (K, C_out, oh, ow); rois (K, 5) rows
// [batch_index, x1, y1, x2, y2] unchecked (CudaBackend.validates_rois): the per-RoI geometry
// kernels (ps_align_geom, ps_pool_edges) run first, mark a row whose batch index is not an
// integer in [0, N) (bit BAD_BATCH of *bad; the launcher raises) or whose coordinates are not
// finite with image -1, and the op kernels give such a RoI zeros and no gradient.  The batch
// and finiteness checks, the sample window, sample positions, the bilinear rule and the
// sample loops are roi.cu's (its device helpers are included, not its kernels).
#include "roi.cu"

// The image of RoI row r if its batch index is an integer in [0, N) and its coordinates are
// finite, else -1 (*bad_batch set for a bad index; NaN included).
__device__ __forceinline__ long long ps_image(const scalar_t* r, long long N, bool* bad_batch)
{
    const long long n = roi_batch(r, N);
    *bad_batch = n < 0;
    return n >= 0 && roi_finite(r) ? n : -1;
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

// The samples of bin (p, q) of RoI k that can touch rows [ylo, yhi] and columns [xlo, xhi]
// (roi.cu's window) and the bin's sample count; false when the RoI has none.
__device__ __forceinline__ bool ps_bin(const scalar_t* geo, const long long* igeo, long long k,
                                       long long p, long long q, double ylo, double yhi,
                                       double xlo, double xhi, SampleWin* s, scalar_t* count)
{
    const long long gh = igeo[3 * k + 1], gw = igeo[3 * k + 2];
    if (igeo[3 * k] < 0 || gh <= 0 || gw <= 0) return false;
    const scalar_t bh = geo[4 * k + 1], bw = geo[4 * k + 3];
    const scalar_t ybase = (scalar_t)p * bh + geo[4 * k];
    const scalar_t xbase = (scalar_t)q * bw + geo[4 * k + 2];
    *count = (scalar_t)(gh * gw);
    *s = sample_win(ybase, bh, gh, xbase, bw, gw, ylo, yhi, absd(ybase) + absd(bh), xlo, xhi,
                    absd(xbase) + absd(bw));
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
        SampleWin s;
        scalar_t count;
        scalar_t acc = 0;
        if (ps_bin(geo, igeo, k, b / ow, b % ow, -1.0, (double)H, -1.0, (double)W, &s, &count))
            acc = win_sum(s, x + (igeo[3 * k] * C + c * nb + b) * H * W, H, W) / count;
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
        SampleWin s;
        scalar_t count;
        if (ps_bin(geo, igeo, k, b / ow, b % ow, -1.0, (double)H, -1.0, (double)W, &s, &count))
            win_scatter(s, gx + (igeo[3 * k] * C + c * nb + b) * H * W, H, W, gy[i], count);
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
            SampleWin s;
            scalar_t count;
            if (igeo[3 * k] != n) continue;
            if (!ps_bin(geo, igeo, k, b / ow, b % ow, (double)h - 2.0, (double)h + 1.0,
                        (double)w - 2.0, (double)w + 1.0, &s, &count))
                continue;
            acc = win_gather(s, h, w, H, W, gy[(k * co + c) * nb + b], count, acc);
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
