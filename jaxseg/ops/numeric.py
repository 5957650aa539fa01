"""Numerical helpers shared by losses, box ops and metrics."""

from __future__ import annotations

import jax.numpy as jnp


def safe_divide(numerator, denominator):
    """`numerator / denominator`, and 0 (with zero gradient) where the denominator is 0."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)
