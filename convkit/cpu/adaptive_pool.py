"""Adaptive average and max pooling (torch's bin rule) -- cpu backend."""
