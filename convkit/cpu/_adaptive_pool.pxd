# cython: language_level=3
"""C-level adaptive pooling kernels, one (H, W) plane per call, for other Cython code to
``cimport``.

Bins (torch's rule, computed by the caller): output row o covers input rows
[hs[o], hs[o] + hl[o]) with hs[o] = floor(o*H/oh), hs[o] + hl[o] = ceil((o+1)*H/oh);
columns likewise with ws, wl.
"""
from cython cimport floating
from libc.stdint cimport int64_t

cdef void adaptive_avg_plane(const floating* x, Py_ssize_t W,
                             const Py_ssize_t* hs, const Py_ssize_t* hl,
                             const Py_ssize_t* ws, const Py_ssize_t* wl,
                             const floating* div, floating* y, Py_ssize_t oh, Py_ssize_t ow,
                             floating* colsum) noexcept nogil
# y (oh x ow) = bin means of plane x (rows of W values); div[o*ow + q] = hl[o]*wl[q];
# colsum: W values of scratch.

cdef void adaptive_max_plane(const floating* x, Py_ssize_t W,
                             const Py_ssize_t* hs, const Py_ssize_t* hl,
                             const Py_ssize_t* ws, const Py_ssize_t* wl,
                             floating* y, int64_t* idx, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil
# y, idx (oh x ow) = each bin's maximum and its flat position h*W + w (torch's NaN / tie rules).
