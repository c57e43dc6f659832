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

import numpy as np

__all__ = ["ConfigError", "SimConfig", "RULES", "OPTIMIZERS", "SCHEDULES", "INITS", "MODELS",
           "BASES", "ENGINES", "OVERLAP_INITS"]

RULES = ("lora", "rslora", "lora-alpha", "fixed")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "cosine")
INITS = ("peft", "gaussian", "lora-one", "gaussian-b")
MODELS = ("lora", "full")
ALIGNS = ("random", "aligned")
BASES = ("random", "eigen")
ENGINES = ("full", "reduced", "flow")
OVERLAP_INITS = ("auto", "factors", "sampled")


class ConfigError(ValueError):
    """An invalid setting. The message is one line: the setting, what is allowed, what was given."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _plain(x: Any) -> Any:
    """NumPy scalars as the Python scalars they hold (``np.int64(64)`` → ``64``)."""
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


@dataclass(frozen=True)
class SimConfig:
    """All settings of one simulation (THEORY.md §1–§3).

    Task (THEORY §1):
        d: input dimension. m: output dimension. task_rank: rank k of the task update Δ⋆.
        spectrum: exponent β of the input spectrum λ_i ∝ i^(−β) (mean 1; 0 = isotropic).
        decay: exponent δ of the task singular values σ⋆_j ∝ j^(−δ).
        noise: label-noise standard deviation σ. align: ``"random"`` (Haar V) or
        ``"aligned"`` (V = top-k eigen-directions of Σ). task_seed: seed of the task
        (``None``: use ``seed``). basis: the feature basis Q of Σ = Q diag(λ) Qᵀ
        (THEORY §1): ``"random"`` (a seeded random rotation; the default, because a real
        network's features are not its input covariance's eigenbasis and Adam depends on
        the basis) or ``"eigen"`` (Q = I, which flatters Adam). SGD is the same in both.
    Data and gradient (THEORY §2 "Data"): batch: minibatch size n; 0 = full batch (the
        exact population gradient, or the whole training set). train_size: N, the size of
        a fixed training set; 0 = fresh samples at every step (the online setting).
    Student (THEORY §2):
        model: ``"lora"`` or ``"full"`` (full fine-tuning baseline). rank: LoRA rank r.
        alpha: LoRA α (rules ``lora``, ``rslora``). rule: scaling rule (``lora`` s = α/r,
        ``rslora`` s = α/√r, ``lora-alpha`` s = c/√r, ``fixed`` s = ``scale``).
        coef: the coefficient c of ``lora-alpha``. scale: s for rule ``fixed``.
        init: ``"peft"`` (A ~ U(−1/√d, 1/√d), B = 0), ``"gaussian"`` (A ~ N(0, init_std²),
        B = 0), ``"lora-one"`` (spectral start from the top-r SVD of −G₀, scaled by
        init_gamma) or ``"gaussian-b"`` (A = 0, B ~ N(0, init_std²)); init_std: the
        Gaussian's σ (``None``: PEFT's variance, 1/√(3d) for A, 1/√(3r) for B);
        init_gamma: γ of ``lora-one`` (s·B₀A₀ = (s/γ)·[−G₀]_r).
    Optimiser (torch.optim semantics): optimizer, lr, momentum, nesterov, beta1, beta2, eps,
        weight_decay (L2 for sgd/adam, decoupled for adamw). loraplus_lr_ratio: λ of LoRA+
        (PEFT's name): η_A = lr, η_B = λ·lr. eps_b: Adam's ε for B (``None``: eps); with
        B' = B/c, (scale c·s, lr η) equals (scale s, η_B = c·η, eps_b = ε/c) (THEORY §3).
    Schedule: schedule (``constant``, ``linear`` warm-up then linear decay to 0, ``cosine``
        warm-up then cosine decay to 0), warmup (warm-up steps).
    Run: steps, seed (initialisation and sample stream), record_every (record the per-step
        terms every this many steps), divergence_bound (a loss above it ends the run as
        diverged), sharpness_steps (steps t at which λ_max of the Hessian is measured),
        snapshot_steps (steps t at which A_t and B_t are stored; t = steps is the end).
    Engine: engine (``"full"``: the factorised Numba kernels; ``"reduced"``: the exact
        overlap dynamics of THEORY §7, for isotropic Σ and full-batch SGD only;
        ``"flow"``: its gradient flow, the η → 0 limit, integrated by scipy's solve_ivp).
        overlap_init (``reduced``/``flow`` only): where the initial overlaps come from:
        ``"factors"`` (draw the task and A₀, B₀ as the full engine does and take their
        overlaps, so the run replays a ``full`` run), ``"sampled"`` (draw the overlaps
        from their exact law, never forming a d- or m-sized array; see
        :func:`signaldrift.sample_overlaps`), ``"auto"`` (``factors`` when the factors
        take at most 64 MiB, else ``sampled``). flow_rtol, flow_atol: solve_ivp's
        tolerances for ``engine = "flow"``.
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
    basis: str = "random"
    # data and gradient
    batch: int = 0
    train_size: int = 0
    # student
    model: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    rule: str = "lora"
    coef: float = 16.0
    scale: float | None = None
    init: str = "peft"
    init_std: float | None = None
    init_gamma: float = 128.0
    # optimiser
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    loraplus_lr_ratio: float = 1.0
    eps_b: float | None = None
    # schedule
    schedule: str = "constant"
    warmup: int = 0
    # run
    steps: int = 200
    seed: int = 0
    record_every: int = 1
    divergence_bound: float = 1e6
    sharpness_steps: tuple[int, ...] = field(default=())
    snapshot_steps: tuple[int, ...] = field(default=())
    # engine
    engine: str = "full"
    overlap_init: str = "auto"
    flow_rtol: float = 1e-10
    flow_atol: float = 1e-12

    def __new__(cls, *args: Any, **kwargs: Any) -> "SimConfig":
        # A dataclass would raise TypeError for an unknown keyword; name it instead.
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown setting; allowed settings are "
                              + ", ".join(sorted(names)))
        if args:
            raise ConfigError("SimConfig: give settings by name, e.g. SimConfig(d=64)")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                # Lists from TOML/JSON become tuples so the dataclass stays hashable.
                value = tuple(_plain(v) for v in value)
            object.__setattr__(self, f.name, _plain(value))
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
        choice("basis", BASES)
        pos_int("batch", 0)
        pos_int("train_size", 0)
        if self.train_size > 0 and self.batch > self.train_size:
            fail("batch", f"at most train_size = {self.train_size} (0 = full batch)",
                 self.batch)
        choice("model", MODELS)
        pos_int("rank", 1, mn)
        choice("rule", RULES)
        real("alpha", positive=True)
        real("coef", positive=True)
        if self.rule == "fixed" and self.scale is None and self.model == "lora":
            fail("scale", "a finite number > 0 when rule is 'fixed'", None)
        real("scale", positive=True, allow_none=True)
        if self.scale is not None and self.rule != "fixed":
            raise ConfigError(f"scale: used only with rule 'fixed', but rule is "
                              f"{self.rule!r}; set rule = 'fixed' or remove scale")
        choice("init", INITS)
        real("init_std", positive=True, allow_none=True)
        real("init_gamma", positive=True)
        choice("optimizer", OPTIMIZERS)
        real("lr", positive=True)
        real("momentum", lo=0.0)
        if self.momentum >= 1.0:
            fail("momentum", "in [0, 1)", self.momentum)
        if self.momentum > 0.0 and self.optimizer != "sgd":
            raise ConfigError(f"momentum: used only with optimizer 'sgd', but optimizer is "
                              f"{self.optimizer!r} (set beta1 for Adam's momentum)")
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
        real("eps_b", positive=True, allow_none=True)
        real("weight_decay", lo=0.0)
        real("loraplus_lr_ratio", positive=True)
        if self.model == "full" and (self.loraplus_lr_ratio != 1.0 or self.eps_b is not None):
            raise ConfigError("loraplus_lr_ratio: per-factor settings (loraplus_lr_ratio, "
                              "eps_b) need model 'lora', but model is 'full'")
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
        if not isinstance(self.snapshot_steps, tuple) or not all(
            _is_int(t) and 0 <= t <= self.steps for t in self.snapshot_steps
        ) or len(set(self.snapshot_steps)) != len(self.snapshot_steps):
            fail("snapshot_steps", f"a list of distinct integers in [0, steps] = "
                 f"[0, {self.steps}]", self.snapshot_steps)
        choice("engine", ENGINES)
        choice("overlap_init", OVERLAP_INITS)
        if self.overlap_init != "auto" and self.engine == "full":
            raise ConfigError(f"overlap_init: used only with engine 'reduced' or 'flow', but "
                              f"engine is 'full'; remove overlap_init or set engine")
        real("flow_rtol", positive=True)
        real("flow_atol", positive=True)
        if self.engine in ("reduced", "flow"):
            self._validate_reduced()

    def _validate_reduced(self) -> None:
        """The reduced engine and its flow close only for isotropic Σ and full-batch (S)GD
        (THEORY §7)."""
        def refuse(name: str, why: str) -> None:
            raise ConfigError(f"engine: {self.engine!r} cannot take {name} = "
                              f"{getattr(self, name)!r}: {why}")

        if self.model != "lora":
            refuse("model", "it simulates the LoRA factors' overlaps")
        if self.optimizer != "sgd":
            refuse("optimizer", "Adam is per-coordinate and does not close on overlaps")
        if self.spectrum != 0.0:
            refuse("spectrum", "an anisotropic Σ needs every power of Σ (use spectrum = 0)")
        if self.batch != 0:
            refuse("batch", "minibatches are random (use batch = 0)")
        if self.train_size != 0:
            refuse("train_size", "a fixed training set's Σ̂ is not isotropic")
        if self.sharpness_steps:
            refuse("sharpness_steps", "the Hessian needs the factors A and B")
        if self.snapshot_steps:
            refuse("snapshot_steps", "the reduced engine never forms A and B")
        small = self.rank + self.task_rank
        if self.overlap_init == "sampled" and min(self.d, self.m) < small:
            raise ConfigError(f"overlap_init: 'sampled' needs d and m >= rank + task_rank = "
                              f"{small}, got d = {self.d}, m = {self.m}; use 'factors'")

    # ------------------------------------------------------------------ derived
    @property
    def effective_task_seed(self) -> int:
        """The task's seed: ``task_seed``, or ``seed`` when it is ``None``."""
        return self.seed if self.task_seed is None else self.task_seed

    @property
    def effective_init_std(self) -> float:
        """σ of the Gaussian inits: ``init_std``, or PEFT's variance (Kaiming-uniform with
        a = √5 on the factor's fan-in): 1/√(3d) for A (``gaussian``), 1/√(3r) for B
        (``gaussian-b``)."""
        if self.init_std is not None:
            return float(self.init_std)
        fan_in = self.rank if self.init == "gaussian-b" else self.d
        return 1.0 / math.sqrt(3.0 * fan_in)

    @property
    def effective_eps_b(self) -> float:
        """Adam's ε for B: ``eps_b``, or ``eps``."""
        return float(self.eps) if self.eps_b is None else float(self.eps_b)

    def replace(self, **changes: Any) -> "SimConfig":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-serialisable (tuples become lists)."""
        # Every field holds a plain scalar or a tuple of them (__post_init__), so this is
        # dataclasses.asdict without its recursive deep copy (a tenth of the time).
        return {name: list(v) if isinstance(v, tuple) else v
                for name in _FIELD_NAMES for v in (getattr(self, name),)}

    def to_json(self) -> str:
        """Canonical JSON of :meth:`to_dict` (sorted keys), used for hashing and archives."""
        # Computed once per instance: the sweep hashes every configuration (cache key) and
        # the config is frozen. Kept outside the fields, so eq, hash and repr ignore it.
        text = self.__dict__.get("_json")
        if text is None:
            text = json.dumps(self.to_dict(), sort_keys=True)
            object.__setattr__(self, "_json", text)
        return text

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
        return _FIELD_NAMES


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SimConfig))
