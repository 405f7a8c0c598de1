"""magvit-pl: MAGVIT in PyTorch Lightning."""
__version__ = "0.1.0"
