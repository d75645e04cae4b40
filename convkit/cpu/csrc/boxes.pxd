# cython: language_level=3
"""The C of csrc/boxes.h (the SSE2 NMS suppression row)."""

cdef extern from "csrc/boxes.h":
    void ck_nms_row_f(const float* x1, const float* y1, const float* x2, const float* y2,
                      const float* area, Py_ssize_t j0, Py_ssize_t j1, float bx1, float by1,
                      float bx2, float by2, float barea, float thr_f,
                      unsigned char* sup) noexcept nogil
