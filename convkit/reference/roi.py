"""Reference (NumPy) roi ops -- placeholder while being written."""


def roi_pool_forward(x, rois, output_size, spatial_scale, out=None):
    raise NotImplementedError


def roi_pool_backward(grad_y, rois, argmax, input_shape):
    raise NotImplementedError


def roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned, out=None):
    raise NotImplementedError


def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale, sampling_ratio, aligned):
    raise NotImplementedError
