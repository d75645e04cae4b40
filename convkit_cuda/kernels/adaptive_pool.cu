// Adaptive average / max pooling (compiled once per dtype: `typedef float|double scalar_t;` is
// prepended and kernel names get a _f32 / _f64 suffix).  x is viewed as NC planes of H x W,
// y as NC planes of oh x ow.  torch's bins: output row i pools input rows
// [floor(i*H/oh), ceil((i+1)*H/oh)), columns likewise; the boundary keeps oh*H and ow*W below
// 2^62, so the products fit.  The max backward is pool.cu's index scatter (convkit_cuda/pool.py).

// GRID_STRIDE_LOOP, window_sum and window_max are pool.cu's (its helpers, not its kernels)
#include "pool.cu"

__device__ __forceinline__ long long bin_start(long long i, long long size, long long out)
{
    return (i * size) / out;
}

__device__ __forceinline__ long long bin_end(long long i, long long size, long long out)
{
    return ((i + 1) * size + out - 1) / out;
}

// Output element i of NC planes of oh x ow: its plane and the input rows [h0, h1) and
// columns [w0, w1) of its bin.
struct Bin { long long nc, h0, h1, w0, w1; };

__device__ __forceinline__ Bin output_bin(long long i, long long H, long long W, long long oh,
                                          long long ow)
{
    const long long q = i % ow, o = (i / ow) % oh;
    Bin b;
    b.nc = i / (ow * oh);
    b.h0 = bin_start(o, H, oh);
    b.h1 = bin_end(o, H, oh);
    b.w0 = bin_start(q, W, ow);
    b.w1 = bin_end(q, W, ow);
    return b;
}

// One thread per output: the bin's sum in row-major order, divided by its area.  Writes
// every element of y.
extern "C" __global__ void adaptive_avg_pool2d_fwd(
    const scalar_t* x, long long NC, long long H, long long W, long long oh, long long ow,
    scalar_t* y)
{
    const long long total = NC * oh * ow;
    GRID_STRIDE_LOOP(i, total) {
        const Bin b = output_bin(i, H, W, oh, ow);
        y[i] = window_sum(x + b.nc * H * W, W, b.h0, b.h1, b.w0, b.w1)
               / (scalar_t)((b.h1 - b.h0) * (b.w1 - b.w0));
    }
}

// Global average pooling (a 1x1 output) of planes too big for one thread each: one block of
// GLOBAL_BLOCK threads per plane (grid-stride over planes), each thread a strided partial sum,
// then a fixed tree in shared memory -- the same order every run.  blockDim.x must be
// GLOBAL_BLOCK.  Writes every element of y.
#define GLOBAL_BLOCK 256
extern "C" __global__ void adaptive_avg_pool2d_global_fwd(
    const scalar_t* x, long long NC, long long HW, scalar_t* y)
{
    __shared__ scalar_t part[GLOBAL_BLOCK];
    for (long long p = blockIdx.x; p < NC; p += gridDim.x) {
        const scalar_t* xp = x + p * HW;
        scalar_t s = 0;
        for (long long k = threadIdx.x; k < HW; k += GLOBAL_BLOCK)
            s += xp[k];
        part[threadIdx.x] = s;
        __syncthreads();
        for (unsigned half = GLOBAL_BLOCK / 2; half > 0; half >>= 1) {
            if (threadIdx.x < half)
                part[threadIdx.x] += part[threadIdx.x + half];
            __syncthreads();
        }
        if (threadIdx.x == 0)
            y[p] = part[0] / (scalar_t)HW;
        __syncthreads();     // part is reused for the next plane
    }
}

// Gather, not scatter: one thread per input element adds grad / area of every bin holding it
// -- rows i in [floor(h*oh/H), ceil((h+1)*oh/H)), columns likewise -- in increasing (i, j).
// Overlapping bins need no atomics: the same bits every run.  Writes every element of gx.
extern "C" __global__ void adaptive_avg_pool2d_bwd(
    const scalar_t* gy, long long NC, long long H, long long W, long long oh, long long ow,
    scalar_t* gx)
{
    const long long total = NC * H * W;
    GRID_STRIDE_LOOP(e, total) {
        long long t = e;
        const long long w = t % W; t /= W;
        const long long h = t % H;
        const long long nc = t / H;
        const long long i0 = (h * oh) / H, i1 = ((h + 1) * oh + H - 1) / H;
        const long long j0 = (w * ow) / W, j1 = ((w + 1) * ow + W - 1) / W;
        const scalar_t* g = gy + nc * oh * ow;
        scalar_t acc = 0;
        for (long long i = i0; i < i1; ++i) {
            const long long kh = bin_end(i, H, oh) - bin_start(i, H, oh);
            for (long long j = j0; j < j1; ++j) {
                const long long kw = bin_end(j, W, ow) - bin_start(j, W, ow);
                acc += g[i * ow + j] / (scalar_t)(kh * kw);
            }
        }
        gx[e] = acc;
    }
}

// One thread per output: window_max over its bin (torch's rule, NaN and ties as there).
// Writes every element of y and idx (flat h*W + w in the input plane).
extern "C" __global__ void adaptive_max_pool2d_fwd(
    const scalar_t* x, long long NC, long long H, long long W, long long oh, long long ow,
    scalar_t* y, long long* idx)
{
    const long long total = NC * oh * ow;
    GRID_STRIDE_LOOP(i, total) {
        const Bin b = output_bin(i, H, W, oh, ow);
        scalar_t m;
        idx[i] = window_max(x + b.nc * H * W, W, b.h0, b.h1, 1, b.w0, b.w1, 1, &m);
        y[i] = m;
    }
}
