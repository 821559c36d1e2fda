"""effnet_gin: EfficientNet as gin-configured TensorFlow 2 builders and trainer."""

__version__ = "0.2.0"
