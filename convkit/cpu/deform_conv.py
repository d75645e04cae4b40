"""Deformable convolution (deform_conv2d, torchvision semantics) -- cpu backend."""
