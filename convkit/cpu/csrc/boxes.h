/* The NMS suppression row (declared in csrc/boxes.pxd, used by _boxes.pyx). */
#ifndef CK_BOXES_H
#define CK_BOXES_H
#include <stddef.h>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define CK_BOX_SSE2 1
#endif

/* suppressed[j] |= IoU(box, j) > thr for j in [j0, j1); finite float32 boxes only.
   thr_f is the largest float <= the double threshold, so "iou > thr_f" in float is
   exactly "(double)iou > thr". Same operations, in the same order, as the reference:
   w = max(min(x2) - max(x1), 0), inter = w * h, union = (area_i + area_j) - inter. */
static void ck_nms_row_f(const float* x1, const float* y1, const float* x2,
                         const float* y2, const float* area, ptrdiff_t j0, ptrdiff_t j1,
                         float bx1, float by1, float bx2, float by2, float barea,
                         float thr_f, unsigned char* sup) {
    ptrdiff_t j = j0;
#ifdef CK_BOX_SSE2
    const __m128 vx1 = _mm_set1_ps(bx1), vy1 = _mm_set1_ps(by1), vx2 = _mm_set1_ps(bx2);
    const __m128 vy2 = _mm_set1_ps(by2), va = _mm_set1_ps(barea), vt = _mm_set1_ps(thr_f);
    const __m128 zero = _mm_setzero_ps();
    for (; j + 4 <= j1; j += 4) {
        __m128 w = _mm_sub_ps(_mm_min_ps(vx2, _mm_loadu_ps(x2 + j)),
                              _mm_max_ps(vx1, _mm_loadu_ps(x1 + j)));
        __m128 h = _mm_sub_ps(_mm_min_ps(vy2, _mm_loadu_ps(y2 + j)),
                              _mm_max_ps(vy1, _mm_loadu_ps(y1 + j)));
        __m128 inter = _mm_mul_ps(_mm_max_ps(w, zero), _mm_max_ps(h, zero));
        __m128 uni = _mm_sub_ps(_mm_add_ps(va, _mm_loadu_ps(area + j)), inter);
        __m128 iou = _mm_andnot_ps(_mm_cmpeq_ps(uni, zero), _mm_div_ps(inter, uni));
        int m = _mm_movemask_ps(_mm_cmpgt_ps(iou, vt));
        if (m) {
            sup[j] |= m & 1; sup[j + 1] |= (m >> 1) & 1;
            sup[j + 2] |= (m >> 2) & 1; sup[j + 3] |= (m >> 3) & 1;
        }
    }
#endif
    for (; j < j1; j++) {
        float w = (bx2 < x2[j] ? bx2 : x2[j]) - (bx1 > x1[j] ? bx1 : x1[j]);
        float h = (by2 < y2[j] ? by2 : y2[j]) - (by1 > y1[j] ? by1 : y1[j]);
        float inter = (w > 0 ? w : 0) * (h > 0 ? h : 0);
        float uni = (barea + area[j]) - inter;
        float iou = uni == 0 ? 0.0f : inter / uni;
        if (iou > thr_f) sup[j] = 1;
    }
}
#endif
