"""ttsr: reference-based x4 super-resolution with the Texture Transformer Network (TTSR)."""

__version__ = "0.1.0"
