// Spatial batch norm kernels (compiled once per dtype: `typedef float|double scalar_t;` is
// prepended and kernel names get a _f32 / _f64 suffix).  x, gy, y, gx are (N, C, HW); the
// per-channel statistics are kept in double.
//
// Three launches a direction.  Forward: bn_stats_partial (one pass over x) -> bn_stats_finalize
// (one thread per channel: mean, variance, invstd, running statistics, the saved statistics in
// scalar_t) -> bn_forward_apply.  Backward: bn_grad_partial -> bn_grad_finalize (also writes
// grad_weight / grad_bias) -> bn_backward_apply.
//
// Reductions are two-level and atomic-free, so every result is the same bits on every run:
// thread (c, p) of a partial kernel takes the elements j = p, p + P, ... of channel c (j runs
// over the N*HW positions, so neighbouring threads read neighbouring addresses; (n, s) of j
// are stepped without a division per element), and a finalize thread merges the P partials
// of its channel in order.

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// Walks j = p, p + P, ... < N*HW of channel c as offsets (n * C + c) * HW + s into x.
#define CHANNEL_LOOP(off, c, p, P, N, C, HW)                                              \
    const long long dn_ = (P) / (HW), ds_ = (P) % (HW);                                  \
    for (long long n_ = (p) / (HW), s_ = (p) % (HW), off = (n_ * (C) + (c)) * (HW) + s_;  \
         n_ < (N);                                                                         \
         n_ += dn_, s_ += ds_, (s_ >= (HW) ? (s_ -= (HW), ++n_) : 0),                      \
         off = (n_ * (C) + (c)) * (HW) + s_)

// partial[(c * P + p) * 2 + {0, 1}] = (sum d, sum d^2) over the elements of thread (c, p),
// d = x - K_c with K_c = x[0, c, 0], the channel's first element: shifted sums need no
// division per element, and with a shift inside the data the variance keeps its digits
// (no cancellation of E[x^2] - E[x]^2 when |mean| >> std).  Writes every partial.
extern "C" __global__ void bn_stats_partial(const scalar_t* x, long long N, long long C,
                                            long long HW, long long P, double* partial)
{
    GRID_STRIDE_LOOP(i, C * P) {
        const long long c = i / P, p = i % P;
        const double k = (double)x[c * HW];
        double s1 = 0, s2 = 0;
        CHANNEL_LOOP(off, c, p, P, N, C, HW) {
            const double d = (double)x[off] - k;
            s1 += d;
            s2 += d * d;
        }
        partial[2 * i] = s1;
        partial[2 * i + 1] = s2;
    }
}

// One thread per channel.  training: add the P partials in order; over M = N*HW elements
// mean = K + S1 / M and the biased variance (S2 - S1 * S1 / M) / M; invstd = 1 / sqrt(var +
// eps); with has_running, running = (1 - momentum) * running + momentum * stat (unbiased
// variance).  eval: the statistics are the running ones.  Writes mean_d, invstd_d (double, for
// the apply) and save_mean, save_invstd (scalar_t, returned to the caller) for every channel.
extern "C" __global__ void bn_stats_finalize(
    const scalar_t* x, const double* partial, long long C, long long HW, long long M,
    long long P, long long training, double eps, double momentum, long long has_running,
    scalar_t* running_mean, scalar_t* running_var, double* mean_d, double* invstd_d,
    scalar_t* save_mean, scalar_t* save_invstd)
{
    GRID_STRIDE_LOOP(c, C) {
        double mean, var;
        if (training) {
            double s1 = 0, s2 = 0;
            for (long long p = 0; p < P; ++p) {
                s1 += partial[2 * (c * P + p)];
                s2 += partial[2 * (c * P + p) + 1];
            }
            const double m = (double)M;
            const double ss = s2 - s1 * (s1 / m);        // sum of squared deviations
            const double dev = ss > 0 ? ss : 0.0;        // rounding never makes it negative
            mean = (double)x[c * HW] + s1 / m;
            var = dev / m;
            if (has_running) {
                running_mean[c] = (scalar_t)((1.0 - momentum) * (double)running_mean[c]
                                             + momentum * mean);
                running_var[c] = (scalar_t)((1.0 - momentum) * (double)running_var[c]
                                            + momentum * (dev / (m - 1.0)));
            }
        } else {
            mean = (double)running_mean[c];
            var = (double)running_var[c];
        }
        const double inv = 1.0 / sqrt(var + eps);
        mean_d[c] = mean;
        invstd_d[c] = inv;
        save_mean[c] = (scalar_t)mean;
        save_invstd[c] = (scalar_t)inv;
    }
}

// Channel of flat element i of an (N, C, HW) array: 32-bit division when the array allows.
__device__ __forceinline__ long long channel_of(long long i, long long HW, long long C,
                                                long long total)
{
    if (total <= 4294967295LL)
        return (long long)(((unsigned int)i / (unsigned int)HW) % (unsigned int)C);
    return (i / HW) % C;
}

// y = (x - mean[c]) * invstd[c] * weight[c] + bias[c] (weight 1, bias 0 without has_affine)
// over all `total` = N*C*HW elements.
extern "C" __global__ void bn_forward_apply(
    const scalar_t* x, const double* mean, const double* invstd, const scalar_t* weight,
    const scalar_t* bias, long long has_affine, long long C, long long HW, long long total,
    scalar_t* y)
{
    GRID_STRIDE_LOOP(i, total) {
        const long long c = channel_of(i, HW, C, total);
        const double xhat = ((double)x[i] - mean[c]) * invstd[c];
        y[i] = has_affine ? (scalar_t)(xhat * (double)weight[c] + (double)bias[c])
                          : (scalar_t)xhat;
    }
}

// partial[(c * P + p) * 2 + {0, 1}] = (sum gy, sum gy * (x - mean) * invstd) over the elements
// of thread (c, p), in double, mean / invstd the forward's saved statistics.  Writes every
// partial.
extern "C" __global__ void bn_grad_partial(
    const scalar_t* gy, const scalar_t* x, const scalar_t* mean, const scalar_t* invstd,
    long long N, long long C, long long HW, long long P, double* partial)
{
    GRID_STRIDE_LOOP(i, C * P) {
        const long long c = i / P, p = i % P;
        const double mu = (double)mean[c], inv = (double)invstd[c];
        double s0 = 0, s1 = 0;
        CHANNEL_LOOP(off, c, p, P, N, C, HW) {
            const double g = (double)gy[off];
            s0 += g;
            s1 += g * (((double)x[off] - mu) * inv);
        }
        partial[2 * i] = s0;
        partial[2 * i + 1] = s1;
    }
}

// One thread per channel: sums[c * 2 + k] = the P partials added in order; with has_weight,
// grad_bias[c] = sums[2c], grad_weight[c] = sums[2c + 1] in scalar_t.  Writes all of sums.
extern "C" __global__ void bn_grad_finalize(const double* partial, long long C, long long P,
                                            long long has_weight, double* sums,
                                            scalar_t* grad_weight, scalar_t* grad_bias)
{
    GRID_STRIDE_LOOP(c, C) {
        double a = 0, b = 0;
        for (long long p = 0; p < P; ++p) {
            a += partial[2 * (c * P + p)];
            b += partial[2 * (c * P + p) + 1];
        }
        sums[2 * c] = a;
        sums[2 * c + 1] = b;
        if (has_weight) {
            grad_bias[c] = (scalar_t)a;
            grad_weight[c] = (scalar_t)b;
        }
    }
}

// training: gx = w * invstd * (gy - sum_gy / M - xhat * sum_gy_xhat / M),
//           xhat = (x - mean) * invstd
// eval (statistics are constants): gx = gy * w * invstd.  w = 1 without has_weight.
extern "C" __global__ void bn_backward_apply(
    const scalar_t* gy, const scalar_t* x, const scalar_t* mean, const scalar_t* invstd,
    const scalar_t* weight, long long has_weight, const double* sums, long long C,
    long long HW, long long total, long long M, long long training, scalar_t* gx)
{
    const double inv_m = 1.0 / (double)M;
    GRID_STRIDE_LOOP(i, total) {
        const long long c = channel_of(i, HW, C, total);
        const double inv = (double)invstd[c], g = (double)gy[i];
        const double w = has_weight ? (double)weight[c] : 1.0;
        if (training) {
            const double xhat = ((double)x[i] - (double)mean[c]) * inv;
            gx[i] = (scalar_t)(w * inv * (g - sums[2 * c] * inv_m
                                          - xhat * sums[2 * c + 1] * inv_m));
        } else {
            gx[i] = (scalar_t)(g * w * inv);
        }
    }
}
