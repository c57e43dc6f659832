"""Simulation settings: one flat, frozen, validated dataclass.

Every setting of a run (task, student, optimiser, schedule, recording) lives in
:class:`SimConfig`, so that a sweep can vary any of them with ``dataclasses.replace`` and a
result carries its whole configuration (``SimConfig.to_dict``). Invalid settings raise
:class:`ConfigError` with a one-line message naming the setting and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigError", "SimConfig", "RULES", "OPTIMIZERS", "SCHEDULES", "INITS", "MODELS"]

RULES = ("lora", "rslora", "lora-alpha", "fixed")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "cosine")
INITS = ("peft", "gaussian")
MODELS = ("lora", "full")
ALIGNS = ("random", "aligned")


class ConfigError(ValueError):
    """An invalid setting. The message is one line: the setting, what is allowed, what was given."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class SimConfig:
    """All settings of one simulation (THEORY.md §1–§3).

    Task (THEORY §1):
        d: input dimension. m: output dimension. task_rank: rank k of the task update Δ⋆.
        spectrum: exponent β of the input spectrum λ_i ∝ i^(−β) (mean 1; 0 = isotropic).
        decay: exponent δ of the task singular values σ⋆_j ∝ j^(−δ).
        noise: label-noise standard deviation σ. align: ``"random"`` (Haar V) or
        ``"aligned"`` (V = top-k eigen-directions of Σ). task_seed: seed of the task
        (``None``: use ``seed``).
    Gradient: batch: minibatch size n; 0 = exact population gradient.
    Student (THEORY §2):
        model: ``"lora"`` or ``"full"`` (full fine-tuning baseline). rank: LoRA rank r.
        alpha: LoRA α (rules ``lora``, ``rslora``). rule: scaling rule (``lora`` s = α/r,
        ``rslora`` s = α/√r, ``lora-alpha`` s = c/√r, ``fixed`` s = ``scale``).
        coef: the coefficient c of ``lora-alpha``. scale: s for rule ``fixed``.
        init: ``"peft"`` (A ~ U(−1/√d, 1/√d)) or ``"gaussian"`` (A ~ N(0, init_std²));
        init_std: σ_A for ``gaussian`` (``None``: 1/√(3d), PEFT's variance).
    Optimiser (torch.optim semantics): optimizer, lr, momentum, nesterov, beta1, beta2, eps,
        weight_decay (L2 for sgd/adam, decoupled for adamw).
    Schedule: schedule (``constant``, ``linear`` warm-up then linear decay to 0, ``cosine``
        warm-up then cosine decay to 0), warmup (warm-up steps).
    Run: steps, seed (initialisation and sample stream), record_every (record the per-step
        terms every this many steps), divergence_bound (a loss above it ends the run as
        diverged), sharpness_steps (steps t at which λ_max of the Hessian is measured).
    """

    # task
    d: int = 256
    m: int = 256
    task_rank: int = 8
    spectrum: float = 0.0
    decay: float = 0.0
    noise: float = 0.0
    align: str = "random"
    task_seed: int | None = None
    # gradient
    batch: int = 0
    # student
    model: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    rule: str = "lora"
    coef: float = 16.0
    scale: float | None = None
    init: str = "peft"
    init_std: float | None = None
    # optimiser
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    # schedule
    schedule: str = "constant"
    warmup: int = 0
    # run
    steps: int = 200
    seed: int = 0
    record_every: int = 1
    divergence_bound: float = 1e6
    sharpness_steps: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        # Normalise lists from TOML/JSON to tuples so the dataclass stays hashable.
        if isinstance(self.sharpness_steps, list):
            object.__setattr__(self, "sharpness_steps", tuple(self.sharpness_steps))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""

        def fail(name: str, allowed: str, value: Any) -> None:
            raise ConfigError(f"{name}: must be {allowed}, got {value!r}")

        def pos_int(name: str, lo: int = 1, hi: int | None = None) -> None:
            v = getattr(self, name)
            rng = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
            if not _is_int(v) or v < lo or (hi is not None and v > hi):
                fail(name, rng, v)

        def real(name: str, *, lo: float | None = None, positive: bool = False,
                 allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = _is_real(v) and math.isfinite(v)
            if ok and positive and not v > 0:
                ok = False
            if ok and lo is not None and v < lo:
                ok = False
            if not ok:
                what = "a finite number"
                if positive:
                    what = "a finite number > 0"
                elif lo is not None:
                    what = f"a finite number >= {lo:g}"
                fail(name, what, v)

        def choice(name: str, options: tuple[str, ...]) -> None:
            v = getattr(self, name)
            if v not in options:
                fail(name, "one of " + ", ".join(options), v)

        pos_int("d")
        pos_int("m")
        mn = min(self.m, self.d)
        pos_int("task_rank", 1, mn)
        real("spectrum", lo=0.0)
        real("decay", lo=0.0)
        real("noise", lo=0.0)
        choice("align", ALIGNS)
        if self.task_seed is not None:
            pos_int("task_seed", 0)
        pos_int("batch", 0)
        choice("model", MODELS)
        pos_int("rank", 1, mn)
        choice("rule", RULES)
        real("alpha", positive=True)
        real("coef", positive=True)
        if self.rule == "fixed" and self.scale is None and self.model == "lora":
            fail("scale", "a finite number > 0 when rule is 'fixed'", None)
        real("scale", positive=True, allow_none=True)
        choice("init", INITS)
        real("init_std", positive=True, allow_none=True)
        choice("optimizer", OPTIMIZERS)
        real("lr", positive=True)
        real("momentum", lo=0.0)
        if self.momentum >= 1.0:
            fail("momentum", "in [0, 1)", self.momentum)
        if not isinstance(self.nesterov, bool):
            fail("nesterov", "true or false", self.nesterov)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0.0):
            fail("nesterov", "used only with optimizer 'sgd' and momentum > 0", self.nesterov)
        for b in ("beta1", "beta2"):
            real(b, lo=0.0)
            if getattr(self, b) >= 1.0:
                fail(b, "in [0, 1)", getattr(self, b))
        # ε = 0 makes Adam's first step 0/0 for A (its gradient vanishes at B₀ = 0).
        real("eps", positive=True)
        real("weight_decay", lo=0.0)
        choice("schedule", SCHEDULES)
        pos_int("steps", 1)
        pos_int("warmup", 0, self.steps)
        pos_int("seed", 0)
        pos_int("record_every", 1)
        real("divergence_bound", positive=True)
        if not isinstance(self.sharpness_steps, tuple) or not all(
            _is_int(t) and 0 <= t < self.steps for t in self.sharpness_steps
        ):
            fail("sharpness_steps", f"a list of integers in [0, steps) = [0, {self.steps})",
                 self.sharpness_steps)

    # ------------------------------------------------------------------ derived
    @property
    def effective_task_seed(self) -> int:
        """The task's seed: ``task_seed``, or ``seed`` when it is ``None``."""
        return self.seed if self.task_seed is None else self.task_seed

    @property
    def effective_init_std(self) -> float:
        """σ_A of the ``gaussian`` init (default 1/√(3d), the variance of PEFT's uniform)."""
        return 1.0 / math.sqrt(3.0 * self.d) if self.init_std is None else float(self.init_std)

    def replace(self, **changes: Any) -> "SimConfig":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-serialisable (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["sharpness_steps"] = list(self.sharpness_steps)
        return out

    def to_json(self) -> str:
        """Canonical JSON of :meth:`to_dict` (sorted keys), used for hashing and archives."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SimConfig":
        """Build from a mapping; unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{unknown[0]}: unknown setting; allowed settings are " + ", ".join(sorted(names))
            )
        return cls(**data)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))
