"""difflab: diffusion models for images, speech and text, trained, sampled and measured."""

__version__ = "0.1.0"
