"""xpvision: convolutional networks from scratch on NumPy (CPU) and CuPy (GPU)."""

__version__ = "0.1.0"
