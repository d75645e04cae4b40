// Spatial batch norm kernels (compiled once per dtype: `typedef float|double scalar_t;` is
// prepended and kernel names get a _f32 / _f64 suffix).  x, gy, y, gx are (N, C, HW); the
// per-channel statistics are kept in double.
//
// Reductions are two-level and atomic-free, so every result is the same bits on every run:
// bn_partial_sums gives thread (c, p) the elements j = p, p + P, ... of channel c (j runs
// over the N*HW positions, so neighbouring threads read neighbouring addresses), and
// bn_reduce adds the P partials of a channel in order.

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// mode 0: partial = (sum x, 0)
// mode 1: partial = (sum (x - mean)^2, 0)
// mode 2: partial = (sum gy, sum gy * (x - mean) * invstd)
// gy is read only in mode 2, mean in modes 1 and 2, invstd in mode 2.
// Writes partial[(c * P + p) * 2 + {0, 1}] for every (c, p).
extern "C" __global__ void bn_partial_sums(
    const scalar_t* x, const scalar_t* gy, const double* mean, const double* invstd,
    long long N, long long C, long long HW, long long P, long long mode, double* partial)
{
    const long long M = N * HW;
    const long long total = C * P;
    GRID_STRIDE_LOOP(i, total) {
        const long long c = i / P, p = i % P;
        const double mu = mode != 0 ? mean[c] : 0.0;
        const double inv = mode == 2 ? invstd[c] : 0.0;
        double s0 = 0, s1 = 0;
        for (long long j = p; j < M; j += P) {
            const long long n = j / HW, s = j - n * HW;
            const long long off = (n * C + c) * HW + s;
            const double v = (double)x[off];
            if (mode == 0) {
                s0 += v;
            } else if (mode == 1) {
                const double d = v - mu;
                s0 += d * d;
            } else {
                const double g = (double)gy[off];
                s0 += g;
                s1 += g * (v - mu) * inv;
            }
        }
        partial[2 * i] = s0;
        partial[2 * i + 1] = s1;
    }
}

// sums[c * 2 + k] = sum over p (in order) of partial[(c * P + p) * 2 + k].  Writes all of sums.
extern "C" __global__ void bn_reduce(const double* partial, long long C, long long P,
                                     double* sums)
{
    GRID_STRIDE_LOOP(i, C * 2) {
        const long long c = i / 2, k = i % 2;
        double acc = 0;
        for (long long p = 0; p < P; ++p) acc += partial[(c * P + p) * 2 + k];
        sums[i] = acc;
    }
}

// y = (x - mean[c]) * invstd[c] * weight[c] + bias[c] over all `total` = N*C*HW elements.
extern "C" __global__ void bn_forward_apply(
    const scalar_t* x, const double* mean, const double* invstd, const scalar_t* weight,
    const scalar_t* bias, long long C, long long HW, long long total, scalar_t* y)
{
    GRID_STRIDE_LOOP(i, total) {
        const long long c = (i / HW) % C;
        y[i] = (scalar_t)(((double)x[i] - mean[c]) * invstd[c] * (double)weight[c]
                          + (double)bias[c]);
    }
}

// training: gx = w * invstd * (gy - sum_gy / M - xhat * sum_gy_xhat / M),
//           xhat = (x - mean) * invstd
// eval (statistics are constants): gx = gy * w * invstd.
// sums[c * 2] = sum gy, sums[c * 2 + 1] = sum gy * xhat (from bn_partial_sums mode 2).
extern "C" __global__ void bn_backward_apply(
    const scalar_t* gy, const scalar_t* x, const double* mean, const double* invstd,
    const scalar_t* weight, const double* sums, long long C, long long HW, long long total,
    long long M, long long training, scalar_t* gx)
{
    const double inv_m = 1.0 / (double)M;
    GRID_STRIDE_LOOP(i, total) {
        const long long c = (i / HW) % C;
        const double inv = invstd[c], w = (double)weight[c], g = (double)gy[i];
        if (training) {
            const double xhat = ((double)x[i] - mean[c]) * inv;
            gx[i] = (scalar_t)(w * inv * (g - sums[2 * c] * inv_m
                                          - xhat * sums[2 * c + 1] * inv_m));
        } else {
            gx[i] = (scalar_t)(g * w * inv);
        }
    }
}
