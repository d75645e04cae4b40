"""Position-sensitive RoI ops (R-FCN): ps_roi_align, ps_roi_pool -- cpu backend."""
