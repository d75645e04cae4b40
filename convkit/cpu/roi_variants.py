"""The lecture's other RoI aggregators: roi_avg_pool (quantised bins, mean), roi_max_align (bilinear samples, max) -- cpu backend."""
