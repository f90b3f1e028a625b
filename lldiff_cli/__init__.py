"""lldiff: low-light image enhancement with diffusion models."""

__version__ = "0.1.0"
