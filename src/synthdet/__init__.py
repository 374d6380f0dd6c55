"""synthdet: synthetic object-detection data from a few labelled real images."""

__version__ = "0.1.0"
