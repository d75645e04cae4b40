"""Reference (NumPy) pool ops -- placeholder while being written."""


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_hw, out=None):
    raise NotImplementedError


def max_pool2d_backward(grad_y, indices, input_shape):
    raise NotImplementedError


def avg_pool2d_forward(x, kernel_size, stride, padding, out_hw, count_include_pad, out=None):
    raise NotImplementedError


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding, count_include_pad):
    raise NotImplementedError
