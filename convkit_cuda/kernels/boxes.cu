// Box kernels (compiled once per dtype: `typedef float|double scalar_t;` is prepended and
// kernel names get a _f32 / _f64 suffix).  Boxes are (x1, y1, x2, y2) rows;
// area = (x2 - x1) * (y2 - y1); a pair whose union is 0 has IoU 0.
// NMS follows the 64-bit-mask scheme of torchvision's CUDA nms: one word per (box, block of
// 64 later boxes) holding the boxes it suppresses, then one block's greedy pass over the mask.

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ scalar_t iou(const scalar_t* a, const scalar_t* b)
{
    const scalar_t left = a[0] > b[0] ? a[0] : b[0];
    const scalar_t top = a[1] > b[1] ? a[1] : b[1];
    const scalar_t right = a[2] < b[2] ? a[2] : b[2];
    const scalar_t bottom = a[3] < b[3] ? a[3] : b[3];
    const scalar_t w = right - left > (scalar_t)0 ? right - left : (scalar_t)0;
    const scalar_t h = bottom - top > (scalar_t)0 ? bottom - top : (scalar_t)0;
    const scalar_t inter = w * h;
    const scalar_t area_a = (a[2] - a[0]) * (a[3] - a[1]);
    const scalar_t area_b = (b[2] - b[0]) * (b[3] - b[1]);
    const scalar_t uni = area_a + area_b - inter;
    return uni == (scalar_t)0 ? (scalar_t)0 : inter / uni;
}

// out[i * M + j] = IoU(b1[i], b2[j]).  Writes all of out.
extern "C" __global__ void box_iou(const scalar_t* b1, const scalar_t* b2, long long N,
                                   long long M, scalar_t* out)
{
    GRID_STRIDE_LOOP(t, N * M) {
        const long long i = t / M, j = t % M;
        out[t] = iou(b1 + 4 * i, b2 + 4 * j);
    }
}

// boxes sorted by decreasing score.  mask[i * nblocks + b] has bit q set when box j = 64 * b + q
// comes after box i (j > i) and IoU(i, j) > thr.  The threshold stays a double and the IoU
// (computed in scalar_t) is compared in double, as torchvision's CPU kernel does: rounding the
// threshold to float would move it (0.3f > 0.3).  Writes all of mask.
extern "C" __global__ void nms_mask(const scalar_t* boxes, long long N, long long nblocks,
                                    double thr, unsigned long long* mask)
{
    GRID_STRIDE_LOOP(t, N * nblocks) {
        const long long i = t / nblocks, b = t % nblocks;
        const long long j0 = 64 * b, j1 = j0 + 64 < N ? j0 + 64 : N;
        unsigned long long bits = 0;
        for (long long j = (j0 > i + 1 ? j0 : i + 1); j < j1; ++j) {
            if ((double)iou(boxes + 4 * i, boxes + 4 * j) > thr) bits |= 1ULL << (j - j0);
        }
        mask[t] = bits;
    }
}

// The greedy pass, in one block (torchvision's scheme): `removed` (nblocks words, in shared
// memory when use_shared != 0 and nblocks <= NMS_SHARED_WORDS, else in removed_g) collects
// the suppressed boxes.  For each word b every thread copies removed[b] into a register and
// walks its 64 boxes; a kept box ORs its mask word b into that register (every thread, same
// value) and its later words into removed[] (thread t owns words b + 1 + t + k * blockDim,
// so no two threads write one word); a barrier per word makes removed[b + 1] complete before
// it is read.  Writes keep[0 .. *nkeep) (positions in the sorted order) and *nkeep.
#define NMS_SHARED_WORDS 4096   // 32 KiB: up to 262144 boxes in shared memory
extern "C" __global__ void nms_reduce(const unsigned long long* mask, long long N,
                                      long long nblocks, long long use_shared,
                                      unsigned long long* removed_g, long long* keep,
                                      long long* nkeep)
{
    __shared__ unsigned long long removed_s[NMS_SHARED_WORDS];
    if (blockIdx.x != 0) return;      // launched as one block; any other has nothing to do
    unsigned long long* removed =
        (use_shared && nblocks <= NMS_SHARED_WORDS) ? removed_s : removed_g;
    const long long tid = threadIdx.x, nt = blockDim.x;
    for (long long q = tid; q < nblocks; q += nt) removed[q] = 0ULL;
    __syncthreads();
    long long count = 0;
    for (long long b = 0; b < nblocks; ++b) {
        unsigned long long rem = removed[b];
        const long long i1 = 64 * b + 64 < N ? 64 * b + 64 : N;
        for (long long i = 64 * b; i < i1; ++i) {
            if ((rem >> (i & 63)) & 1ULL) continue;
            if (tid == 0) keep[count] = i;
            ++count;
            const unsigned long long* row = mask + i * nblocks;
            rem |= row[b];
            for (long long q = b + 1 + tid; q < nblocks; q += nt) removed[q] |= row[q];
        }
        __syncthreads();
    }
    if (tid == 0) *nkeep = count;
}
