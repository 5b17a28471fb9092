"""IEL Studio: clean noisy segmentation masks with inverse-evolution-layer regularised networks."""

__version__ = "0.1.0"
