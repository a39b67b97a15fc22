"""normscope: the geometry of normalization layers in real neural networks."""

__version__ = "0.1.0"
