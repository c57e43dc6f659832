"""LoRA scaling rules (THEORY.md §2)."""

from __future__ import annotations

import math

from ._config import SimConfig

__all__ = ["scale_factor"]


def scale_factor(config: SimConfig) -> float:
    """The scaling factor s of ``W = W₀ + s·B A`` for the config's rule (THEORY §2).

    ========== =============================== ======================================
    rule       s                               note
    ========== =============================== ======================================
    lora       α / r                           Hu et al.; PEFT default
    rslora     α / √r                          rsLoRA; PEFT ``use_rslora=True``
    lora-alpha c / √r  (α = c·√r)              LoRA-α: the √r law, large coefficient c
    fixed      ``config.scale``                s given directly
    ========== =============================== ======================================

    Full fine-tuning (``model="full"``) has no adapter; its s is 1.

    Args:
        config: the simulation settings (``rule``, ``alpha``, ``rank``, ``coef``, ``scale``).

    Returns:
        s as a Python float.
    """
    if config.model == "full":
        return 1.0
    r = config.rank
    if config.rule == "lora":
        return float(config.alpha) / r
    if config.rule == "rslora":
        return float(config.alpha) / math.sqrt(r)
    if config.rule == "lora-alpha":
        return float(config.coef) / math.sqrt(r)
    return float(config.scale)


def effective_alpha(config: SimConfig) -> float:
    """The α that PEFT's ``lora`` convention (s = α/r) would need to give the same s."""
    return scale_factor(config) * config.rank
