"""ganops: train GANs, judge them, promote the good ones and serve them safely."""

__version__ = "0.1.0"
