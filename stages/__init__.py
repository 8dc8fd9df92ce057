"""cnnlab: convolutional image classifiers trained and evaluated as a DVC pipeline."""

__version__ = "0.1.0"
