"""Reference (NumPy) conv ops -- placeholder while being written."""


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out=None):
    raise NotImplementedError


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, needs_input_grad, has_bias):
    raise NotImplementedError
