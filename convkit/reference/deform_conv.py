"""Deformable convolution (deform_conv2d, torchvision semantics) -- numpy reference."""
