"""Flax modules of TimeCraft: UNet denoiser, prompt conditioners, text fusion."""

from timecraft_jax.models.timecraft import TimeCraftModel, build_model, init_variables

__all__ = ["TimeCraftModel", "build_model", "init_variables"]
