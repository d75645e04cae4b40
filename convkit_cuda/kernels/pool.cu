// Pooling kernels (compiled once per dtype: `typedef float|double scalar_t;` is prepended and
// kernel names get a _f32 / _f64 suffix).  x is viewed as NC planes of H x W, y as NC planes
// of Ho x Wo; indices are flat h*W + w into the unpadded input plane (torch's return_indices).
// Window arithmetic follows torch's max_pool2d / avg_pool2d kernels.

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// The maximum of plane xp (rows of W) over rows h0, h0 + dh, ... < h1 and columns w0, w0 + dw,
// ... < w1, torch's rule: from -inf at the window's first element, an element is taken when
// `v > m || v != v` in row-major order -- a NaN wins (the last NaN), ties keep the first
// maximum, a window of -inf reports its first element.  *m = the maximum; returns its flat
// index h * W + w.
__device__ __forceinline__ long long window_max(const scalar_t* xp, long long W, long long h0,
                                                long long h1, long long dh, long long w0,
                                                long long w1, long long dw, scalar_t* m)
{
    long long best = h0 * W + w0;
    *m = (scalar_t)__longlong_as_double(0xfff0000000000000ULL);   // -inf
    for (long long h = h0; h < h1; h += dh) {
        for (long long w = w0; w < w1; w += dw) {
            const scalar_t v = xp[h * W + w];
            if (v > *m || v != v) {
                *m = v;
                best = h * W + w;
            }
        }
    }
    return best;
}

// The sum of plane xp (rows of W) over rows [h0, h1) and columns [w0, w1), row-major.
__device__ __forceinline__ scalar_t window_sum(const scalar_t* xp, long long W, long long h0,
                                               long long h1, long long w0, long long w1)
{
    scalar_t acc = 0;
    for (long long h = h0; h < h1; ++h)
        for (long long w = w0; w < w1; ++w) acc += xp[h * W + w];
    return acc;
}

// Window (oh, ow) of avg_pool2d clipped to the image, rows [*h0, *h1) and columns [*w0, *w1);
// returns torch's divisor: with count_include_pad the window clipped to the padded extent
// [-p, H + p), without, the number of in-image elements.
__device__ __forceinline__ long long avg_window(long long oh, long long ow, long long H,
                                                long long W, long long kh, long long kw,
                                                long long sh, long long sw, long long ph,
                                                long long pw, long long count_include_pad,
                                                long long* h0, long long* h1, long long* w0,
                                                long long* w1)
{
    const long long hstart = oh * sh - ph, wstart = ow * sw - pw;
    long long hend = hstart + kh, wend = wstart + kw;
    if (hend > H + ph) hend = H + ph;
    if (wend > W + pw) wend = W + pw;
    const long long pool_size = (hend - hstart) * (wend - wstart);
    *h0 = hstart < 0 ? 0 : hstart;
    *w0 = wstart < 0 ? 0 : wstart;
    *h1 = hend > H ? H : hend;
    *w1 = wend > W ? W : wend;
    return count_include_pad ? pool_size : (*h1 - *h0) * (*w1 - *w0);
}

// Writes every element of y and idx.  Padding counts as -inf; a NaN in the window wins
// (`v > m || v != v`, as torch, so the last NaN's index is kept); ties keep the first
// maximum in row-major window order (strict >).
extern "C" __global__ void max_pool2d_fwd(
    const scalar_t* x, long long NC, long long H, long long W, long long Ho, long long Wo,
    long long kh, long long kw, long long sh, long long sw, long long ph, long long pw,
    long long dh, long long dw, scalar_t* y, long long* idx)
{
    const long long total = NC * Ho * Wo;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long ow = t % Wo; t /= Wo;
        const long long oh = t % Ho;
        const long long nc = t / Ho;
        long long hstart = oh * sh - ph, wstart = ow * sw - pw;
        const long long hend0 = hstart + (kh - 1) * dh + 1, wend0 = wstart + (kw - 1) * dw + 1;
        const long long hend = hend0 < H ? hend0 : H, wend = wend0 < W ? wend0 : W;
        while (hstart < 0) hstart += dh;
        while (wstart < 0) wstart += dw;
        scalar_t m;
        idx[i] = window_max(x + nc * H * W, W, hstart, hend, dh, wstart, wend, dw, &m);
        y[i] = m;
    }
}

// gx (zero-filled by the caller) += gy scattered at idx, one thread per element of gy.
// atomicAdd: the order of additions into one element of gx varies from run to run, so the
// result is not bit-reproducible when windows overlap; see the csr_* gather for the
// deterministic path (csr_*).  An index outside [0, HW) is skipped and sets *bad = 1 (the launcher
// reads the flag once and raises): the kernel never trusts the caller's range check.
extern "C" __global__ void max_pool2d_bwd_atomic(
    const scalar_t* gy, const long long* idx, long long NC, long long HoWo, long long HW,
    scalar_t* gx, unsigned long long* bad)
{
    const long long total = NC * HoWo;
    GRID_STRIDE_LOOP(i, total) {
        const long long nc = i / HoWo;
        const long long j = idx[i];
        if (j < 0 || j >= HW) {
            *bad = 1ULL;
            continue;
        }
        atomicAdd(gx + nc * HW + j, gy[i]);
    }
}

// keys[i] = nc * HW + idx[i], the flat input element of gradient i (for the csr_* gather);
// an index outside [0, HW) gives key -1 (skipped) and sets *bad = 1.  Writes all of keys.
extern "C" __global__ void max_pool2d_keys(
    const long long* idx, long long NC, long long HoWo, long long HW, long long* keys,
    unsigned long long* bad)
{
    const long long total = NC * HoWo;
    GRID_STRIDE_LOOP(i, total) {
        const long long j = idx[i];
        if (j < 0 || j >= HW) {
            *bad = 1ULL;
            keys[i] = -1;
        } else {
            keys[i] = (i / HoWo) * HW + j;
        }
    }
}

// Deterministic scatter-add as a gather, in three kernels over an inverse index (CSR):
// out[e] = sum of vals[j] over the j with keys[j] == e, added in increasing j -- the order of
// a serial loop, so the same bits every run and on every device.  Negative keys are skipped.
// csr_count: counts[e] = number of j with keys[j] == e (integer atomics: exact).
extern "C" __global__ void csr_count(const long long* keys, long long L,
                                     unsigned long long* counts)
{
    GRID_STRIDE_LOOP(j, L) {
        const long long e = keys[j];
        if (e >= 0) atomicAdd(counts + e, 1ULL);
    }
}

// csr_fill: list[ends[e] - counts[e] + slot] = j, slot from an atomic cursor per element (so
// a segment's order varies between runs; csr_gather sorts it).  cursor zero-filled by the
// caller.
extern "C" __global__ void csr_fill(const long long* keys, long long L,
                                    const unsigned long long* counts,
                                    const unsigned long long* ends, unsigned long long* cursor,
                                    long long* list)
{
    GRID_STRIDE_LOOP(j, L) {
        const long long e = keys[j];
        if (e < 0) continue;
        const unsigned long long slot = atomicAdd(cursor + e, 1ULL);
        list[ends[e] - counts[e] + slot] = j;
    }
}

// csr_gather: one thread per output element sorts its segment of list (insertion sort in
// place: a segment holds the outputs that chose one input -- a few for pooling windows,
// longer only for contrived indices) and adds vals in that order.  Writes every element of
// out (0 where no key points).
extern "C" __global__ void csr_gather(const scalar_t* vals, const unsigned long long* counts,
                                      const unsigned long long* ends, long long size,
                                      long long* list, scalar_t* out)
{
    GRID_STRIDE_LOOP(e, size) {
        const long long n = (long long)counts[e];
        long long* seg = list + ((long long)ends[e] - n);
        for (long long a = 1; a < n; ++a) {
            const long long v = seg[a];
            long long b = a - 1;
            while (b >= 0 && seg[b] > v) {
                seg[b + 1] = seg[b];
                --b;
            }
            seg[b + 1] = v;
        }
        scalar_t acc = 0;
        for (long long a = 0; a < n; ++a) acc += vals[seg[a]];
        out[e] = acc;
    }
}

// Writes every element of y.  Divisor as torch: with count_include_pad the window clipped to
// the padded extent [-p, H + p); without, the number of in-image elements.
extern "C" __global__ void avg_pool2d_fwd(
    const scalar_t* x, long long NC, long long H, long long W, long long Ho, long long Wo,
    long long kh, long long kw, long long sh, long long sw, long long ph, long long pw,
    long long count_include_pad, scalar_t* y)
{
    const long long total = NC * Ho * Wo;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long ow = t % Wo; t /= Wo;
        const long long oh = t % Ho;
        const long long nc = t / Ho;
        long long h0, h1, w0, w1;
        const long long div =
            avg_window(oh, ow, H, W, kh, kw, sh, sw, ph, pw, count_include_pad, &h0, &h1, &w0, &w1);
        y[i] = h0 >= h1 || w0 >= w1 ? (scalar_t)0
                                    : window_sum(x + nc * H * W, W, h0, h1, w0, w1) / (scalar_t)div;
    }
}

// Gradient of avg_pool2d_fwd by gather: one thread per element of gx sums gy / divisor over
// the windows that contain it (deterministic).  Writes every element of gx.
extern "C" __global__ void avg_pool2d_bwd(
    const scalar_t* gy, long long NC, long long H, long long W, long long Ho, long long Wo,
    long long kh, long long kw, long long sh, long long sw, long long ph, long long pw,
    long long count_include_pad, scalar_t* gx)
{
    const long long total = NC * H * W;
    GRID_STRIDE_LOOP(i, total) {
        long long t = i;
        const long long w = t % W; t /= W;
        const long long h = t % H;
        const long long nc = t / H;
        // windows oh with oh*sh - ph <= h < oh*sh - ph + kh (all indices non-negative here)
        const long long ohs = (h + ph < kh) ? 0 : (h + ph - kh) / sh + 1;
        const long long ohe0 = (h + ph) / sh + 1, ohe = ohe0 < Ho ? ohe0 : Ho;
        const long long ows = (w + pw < kw) ? 0 : (w + pw - kw) / sw + 1;
        const long long owe0 = (w + pw) / sw + 1, owe = owe0 < Wo ? owe0 : Wo;
        const scalar_t* gp = gy + nc * Ho * Wo;
        scalar_t acc = 0;
        for (long long oh = ohs; oh < ohe; ++oh) {
            for (long long ow = ows; ow < owe; ++ow) {
                long long h0, h1, w0, w1;
                const long long div = avg_window(oh, ow, H, W, kh, kw, sh, sw, ph, pw,
                                                 count_include_pad, &h0, &h1, &w0, &w1);
                acc += gp[oh * Wo + ow] / (scalar_t)div;
            }
        }
        gx[i] = acc;
    }
}
