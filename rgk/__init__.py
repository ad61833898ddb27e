"""rgk: reward-guided decoding and representation editing kernels."""
__version__ = "0.1.0"
