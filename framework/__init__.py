"""Compare post-training methods for reasoning language models on equal footing."""

__version__ = "0.1.0"
