"""JAX/Flax reimplementation of TimeCraft: diffusion models for time-series generation."""

__version__ = "0.1.0"
