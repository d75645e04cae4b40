__all__ = []  # placeholder while being written
