"""Transposed convolution (conv_transpose2d), built on the conv family -- cuda backend."""
