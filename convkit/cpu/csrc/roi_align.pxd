# cython: language_level=3
"""The C of csrc/roi_align.h (RoI align's float32 kernels on the NHWC map)."""

cdef extern from "csrc/roi_align.h":
    void ck_align_roi_f(const float* img, Py_ssize_t C, Py_ssize_t nbins, const Py_ssize_t* first,
                        const Py_ssize_t* off, const float* w, float fcount, double count,
                        void* scratch, float* y) noexcept nogil
    void ck_align_roi_bwd_f(float* gb, Py_ssize_t cb, Py_ssize_t nbins, const Py_ssize_t* first,
                            const Py_ssize_t* off, const float* w, float fcount, double count,
                            const float* gyk, float* gt, const float* next) noexcept nogil
