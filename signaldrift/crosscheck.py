"""PyTorch cross-check of the simulator, and PEFT's LoRA semantics.

The simulator (:func:`signaldrift.simulate`) evaluates the model of THEORY.md §1–§2 in
factorised form with Numba kernels. This module writes the same dynamics a second time,
densely, in PyTorch: the adapter is an ``nn.Module`` holding ``A`` and ``B`` (float64),
``W − W₀ = s·B A`` (W₀ cancels from every residual, THEORY §1), the loss is the population
excess loss ``L = ½ tr(E Σ Eᵀ)`` with ``E = sBA − Δ⋆`` or the minibatch loss
``(1/2n) Σᵢ ‖E xᵢ − εᵢ‖² = (1/2n)‖X Eᵀ − N‖²`` (whose W-gradient is ``Ĝ = (1/n) Rᵀ X``,
``R = X Eᵀ − N``, THEORY §2), autograd gives the gradients and ``torch.optim`` (SGD with
momentum / Nesterov / L2 decay, Adam, AdamW) takes the steps with the per-step learning rate
written into ``param_groups``. Nothing is shared with the simulator's code except its
inputs: the task (:func:`~signaldrift.make_task`), ``A₀`` (:func:`~signaldrift.init_adapter`),
the learning rates (:func:`~signaldrift.learning_rates`), the minibatches
(:class:`~signaldrift.SampleStream`) and ``s`` (:func:`~signaldrift.scale_factor`).

:func:`compare` runs both and reports the largest relative deviation
``max|x − y| / max|y|`` (y: the simulator) of the loss trajectory and of the final factors.
The ``crosscheck`` subcommand (:func:`add_parser`, :func:`handler`) runs
:func:`default_configs` and prints one row per configuration and a one-line verdict.

The PEFT functions (:func:`peft_scale`, :func:`peft_init_sample`, :func:`peft_trajectory`)
check that the simulator's scaling rules ``lora`` and ``rslora`` and its ``peft`` init are
those of Hugging Face PEFT's ``LoraConfig`` / ``get_peft_model``, and train PEFT's own LoRA
layer through its forward pass for a trajectory to compare with the simulator.

PyTorch (and PEFT) are optional: importing this module imports neither; every function
that needs them imports them and raises :class:`~signaldrift.ConfigError` with the install
command when they are missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._config import ConfigError, SimConfig
from ._init import init_adapter
from ._sampling import SampleStream
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._task import make_task

__all__ = [
    "CrossCheckRow",
    "DEFAULT_THRESHOLD",
    "add_parser",
    "compare",
    "default_configs",
    "handler",
    "peft_init_sample",
    "peft_scale",
    "peft_trajectory",
    "relative_deviation",
    "run_torch",
]

#: Default pass threshold of :func:`compare` and of ``signaldrift crosscheck``, on CPU and
#: on CUDA. Both sides compute in float64 (TF32 never applies to float64 matmuls), so they
#: differ only by rounding in a different order (factorised Numba kernels against dense
#: torch products): the worst measured CPU deviation over :func:`default_configs` is 4.9e-15,
#: and a 1e-12 relative perturbation of A₀ grows at most 36-fold over those runs
#: (docs/crosscheck.md). A CUDA build again changes only the order of float64 reductions,
#: so its deviation should stay near 1e-13; 1e-9 leaves four orders of magnitude of margin
#: while any modelling difference (a scale off by 1e-4, a missing bias correction) shows
#: up at 1e-6 or more.
DEFAULT_THRESHOLD = 1e-9

_TORCH_MISSING = (
    "crosscheck: needs PyTorch; install with pip install 'signaldrift[torch]' (torch==2.13.0)"
)
_PEFT_MISSING = "crosscheck: PEFT semantics need peft; install with pip install peft"


# ----------------------------------------------------------------------------- imports
def _torch() -> Any:
    """Import torch, or raise :class:`ConfigError` with the install command."""
    try:
        import torch
    except ImportError as exc:  # torch is the optional extra signaldrift[torch]
        raise ConfigError(_TORCH_MISSING) from exc
    return torch


def _peft() -> Any:
    _torch()
    try:
        import peft
    except ImportError as exc:
        raise ConfigError(_PEFT_MISSING) from exc
    return peft


def _device(torch: Any, device: str | None) -> Any:
    """``device`` (``None`` or ``"auto"``: ``cuda`` when available, else ``cpu``)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {device!r} requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of torch"
        )
    return torch.device(device)


# ----------------------------------------------------------------------------- models
def _modules(torch: Any) -> tuple[type, type]:
    """The two students of THEORY §2 as ``nn.Module`` classes (defined once torch exists)."""
    nn = torch.nn

    class LoRA(nn.Module):
        """``W − W₀ = s·B A`` with trainable ``A`` (r, d) and ``B`` (m, r)."""

        def __init__(self, A0: Any, B0: Any, scale: float) -> None:
            super().__init__()
            self.A = nn.Parameter(A0.clone())
            self.B = nn.Parameter(B0.clone())
            self.scale = float(scale)

        def forward(self) -> Any:
            return self.scale * (self.B @ self.A)

    class Full(nn.Module):
        """Full fine-tuning: ``W − W₀ = Δ`` with ``Δ`` (m, d) trained directly from 0."""

        def __init__(self, m: int, d: int, *, dtype: Any, device: Any) -> None:
            super().__init__()
            self.Delta = nn.Parameter(torch.zeros(m, d, dtype=dtype, device=device))

        def forward(self) -> Any:
            return self.Delta

    return LoRA, Full


def _make_optimizer(params: list[Any], config: SimConfig) -> Any:
    """The ``torch.optim`` optimiser of ``config`` (THEORY §2; CONTRACTS: torch semantics).

    ``params`` is a list of parameters or of param-group dicts; a group's ``lr_ratio``
    (LoRA+: B's group) multiplies the scheduled learning rate in :func:`_train`.
    """
    torch = _torch()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
               weight_decay=config.weight_decay)


def _train(config: SimConfig, model: Any, residual: Any, *, dtype: Any, device: Any,
           task: Any, params: list[Any] | None = None) -> dict[str, Any]:
    """The training loop shared by :func:`run_torch` and :func:`peft_trajectory`.

    ``residual(X, N)`` returns the minibatch residual ``R = X Eᵀ − N`` (n, m), and
    ``residual(None, None)`` the population residual ``Σ^½ Eᵀ`` (d, m), so that
    ``½‖residual‖²`` is ``L = ½ tr(E Σ Eᵀ)``. Before each step and after the last the
    population loss is recorded; a loss that is non-finite or above
    ``config.divergence_bound`` ends the run as diverged (that entry and all later ones
    NaN, the parameters kept as they were at that step), as in :class:`SimulationResult`.
    """
    torch = _torch()
    T = config.steps
    lrs = learning_rates(config)
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(params, config)
    stream = SampleStream(config, task.lam) if config.batch > 0 else None
    chunks = stream.chunks(T, 256) if stream is not None else None
    Xc = Nc = None
    pos = 0
    loss = np.full(T + 1, np.nan)
    diverged_step = -1
    for t in range(T + 1):
        with torch.no_grad():
            lt = 0.5 * float(torch.sum(residual(None, None) ** 2))
        if not math.isfinite(lt) or lt > config.divergence_bound:
            diverged_step = t
            break
        loss[t] = lt
        if t == T:
            break
        opt.zero_grad(set_to_none=True)
        if stream is None:
            R = residual(None, None)
            batch_loss = 0.5 * torch.sum(R * R)
        else:
            if Xc is None or pos == Xc.shape[0]:
                Xn, Nn = next(chunks)
                # the stream draws Σ's eigen-coordinates; the model sees the features
                Xn = task.basis.to_features(Xn.reshape(-1, config.d)).reshape(Xn.shape)
                Xc = torch.as_tensor(Xn, dtype=dtype, device=device)
                Nc = torch.as_tensor(Nn, dtype=dtype, device=device)
                pos = 0
            R = residual(Xc[pos], Nc[pos])
            pos += 1
            batch_loss = (0.5 / config.batch) * torch.sum(R * R)
        batch_loss.backward()
        for group in opt.param_groups:
            group["lr"] = float(lrs[t]) * group.get("lr_ratio", 1.0)
        opt.step()
    return {"loss": loss, "diverged": diverged_step >= 0, "diverged_step": diverged_step}


def run_torch(config: SimConfig, *, device: str | None = None) -> dict[str, Any]:
    """Train the model of ``config`` densely in PyTorch (float64, autograd, ``torch.optim``).

    LoRA (THEORY §2): ``W − W₀ = s·B A`` with ``A₀`` from :func:`~signaldrift.init_adapter`,
    ``B₀ = 0``, s from :func:`~signaldrift.scale_factor`; full fine-tuning
    (``config.model == "full"``): ``W − W₀ = Δ``, ``Δ₀ = 0``. Loss: population
    ``½ tr(E Σ Eᵀ)`` (``batch == 0``) or the minibatch loss ``(1/2n)‖X Eᵀ − N‖²`` on the
    batches of :class:`~signaldrift.SampleStream`; per-step learning rate from
    :func:`~signaldrift.learning_rates`.

    Args:
        config: the simulation settings.
        device: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``); ``None`` or ``"auto"``: ``cuda``
            when available, else ``cpu``.

    Returns:
        A dict with ``loss`` (steps+1,) the population excess loss ½tr(EΣEᵀ) before each
        step t = 0..steps−1 and after the last (NaN from a divergence on), ``A`` (r, d),
        ``B`` (m, r) final factors ((0, d) and (m, 0) for full fine-tuning), ``Delta``
        final Δ (full fine-tuning, else ``None``), ``scale``, ``diverged``,
        ``diverged_step`` (−1 if never), ``device`` (str) and ``torch_version``.

    Raises:
        ConfigError: torch is not installed, or CUDA was asked for and is not available.
    """
    torch = _torch()
    dev = _device(torch, device)
    f64 = torch.float64
    LoRA, Full = _modules(torch)
    task = make_task(config)
    dstar = torch.as_tensor(task.delta_star(), dtype=f64, device=dev)  # feature basis
    sqrt_sigma = torch.as_tensor(task.sigma_matrix(0.5), dtype=f64, device=dev)
    s = scale_factor(config)
    params = None
    if config.model == "full":
        model = Full(config.m, config.d, dtype=f64, device=dev)
    else:
        A0, B0 = init_adapter(config, task)
        model = LoRA(torch.as_tensor(A0, dtype=f64, device=dev),
                     torch.as_tensor(B0, dtype=f64, device=dev), s)
        # LoRA+ (η_B = λ·η) and Adam's ε for B as a second param group
        params = [{"params": [model.A]},
                  {"params": [model.B], "lr_ratio": float(config.loraplus_lr_ratio),
                   **({"eps": config.effective_eps_b} if config.optimizer != "sgd" else {})}]

    def residual(X: Any, N: Any) -> Any:
        E = model() - dstar
        if X is None:
            return sqrt_sigma @ E.T  # Σ^½ Eᵀ: ½‖·‖² = ½ tr(E Σ Eᵀ)
        return X @ E.T - N

    out = _train(config, model, residual, dtype=f64, device=dev, task=task, params=params)
    if config.model == "full":
        out["A"] = np.zeros((0, config.d))
        out["B"] = np.zeros((config.m, 0))
        out["Delta"] = model.Delta.detach().cpu().numpy().copy()
    else:
        out["A"] = model.A.detach().cpu().numpy().copy()
        out["B"] = model.B.detach().cpu().numpy().copy()
        out["Delta"] = None
    out.update(scale=s, device=str(dev), torch_version=str(torch.__version__))
    return out


# ----------------------------------------------------------------------------- compare
def relative_deviation(x: Any, y: Any) -> float:
    """``max|x − y| / max|y|`` over the entries where both are finite (y: the reference).

    Returns 0 for empty arrays and ``inf`` when shapes differ or exactly one of x, y is
    finite at some entry (a divergence at different steps). If ``y`` is zero where finite,
    returns ``max|x|`` (the absolute deviation).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        return math.inf
    if x.size == 0:
        return 0.0
    fx, fy = np.isfinite(x), np.isfinite(y)
    if np.any(fx != fy):
        return math.inf
    if not np.any(fy):
        return 0.0
    diff = float(np.max(np.abs(x[fx] - y[fy])))
    scale = float(np.max(np.abs(y[fy])))
    return diff / scale if scale > 0.0 else diff


def _num(x: float) -> float | str:
    """A float for JSON: non-finite values as the strings ``"inf"`` / ``"nan"`` (strict JSON)."""
    return float(x) if math.isfinite(x) else str(float(x))


def _optimizer_label(c: SimConfig) -> str:
    if c.optimizer != "sgd":
        label = c.optimizer
    elif c.nesterov:
        label = f"sgd-nesterov{c.momentum:g}"
    elif c.momentum > 0:
        label = f"sgd-mom{c.momentum:g}"
    else:
        label = "sgd"
    if c.weight_decay > 0:
        label += f"+wd{c.weight_decay:g}"
    return label


@dataclass(frozen=True)
class CrossCheckRow:
    """One configuration of the cross-check: relative deviations of torch from the simulator.

    Attributes:
        config: the settings that were run.
        device: the torch device (``"cpu"``, ``"cuda:0"``).
        threshold: the pass threshold on :attr:`worst`.
        loss: ``max|x − y| / max|y|`` of the loss trajectory (y: simulator, x: torch).
        A: the same for the final A (0 for full fine-tuning).
        B: the same for the final B, or for the final Δ of full fine-tuning.
        diverged: whether the simulator's run diverged (torch must diverge at the same step).
        seconds: wall time of both runs.
    """

    config: SimConfig
    device: str
    threshold: float
    loss: float
    A: float
    B: float
    diverged: bool
    seconds: float

    @property
    def worst(self) -> float:
        """The largest of the three deviations."""
        return max(self.loss, self.A, self.B)

    @property
    def passed(self) -> bool:
        """``worst <= threshold`` (NaN fails)."""
        return bool(self.worst <= self.threshold)

    @property
    def label(self) -> dict[str, str]:
        """Short columns: rule, optimiser, batch, shape."""
        c = self.config
        rule = "full" if c.model == "full" else c.rule
        batch = "pop" if c.batch == 0 else f"n={c.batch}"
        shape = f"d{c.d} m{c.m} k{c.task_rank}" + ("" if c.model == "full" else f" r{c.rank}")
        return {"rule": rule, "optimizer": _optimizer_label(c), "batch": batch, "shape": shape}

    def line(self) -> str:
        """One printed row."""
        lb = self.label
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{lb['rule']:<10} {lb['optimizer']:<20} {lb['batch']:<5} {lb['shape']:<20} "
                f"loss {self.loss:8.1e}  A {self.A:8.1e}  B {self.B:8.1e}  {verdict}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: labels, deviations, verdict, and the whole config."""
        return {**self.label, "loss_deviation": _num(self.loss), "A_deviation": _num(self.A),
                "B_deviation": _num(self.B), "worst_deviation": _num(self.worst),
                "passed": self.passed,
                "threshold": self.threshold, "diverged": self.diverged, "device": self.device,
                "seconds": self.seconds, "config": self.config.to_dict()}


def compare(config: SimConfig, *, device: str | None = None,
            threshold: float = DEFAULT_THRESHOLD) -> CrossCheckRow:
    """Run :func:`signaldrift.simulate` and :func:`run_torch` on ``config`` and compare.

    Deviations are :func:`relative_deviation` (``max|x − y| / max|y|``, y the simulator)
    of the loss trajectory at the simulator's ``loss_step``, of the final A and of the final
    B (full fine-tuning: of the final Δ, reported in the ``B`` column).

    Args:
        config: the settings.
        device: torch device (see :func:`run_torch`).
        threshold: pass threshold on the worst deviation.

    Returns:
        The :class:`CrossCheckRow`.
    """
    from ._simulate import simulate

    t0 = time.perf_counter()
    res = simulate(config)
    ref = run_torch(config, device=device)
    seconds = time.perf_counter() - t0
    steps = np.asarray(res.loss_step, dtype=np.int64)
    dev_loss = relative_deviation(ref["loss"][steps], res.records["loss"])
    if bool(res.diverged) != bool(ref["diverged"]) or (
        res.diverged and int(res.diverged_step) != int(ref["diverged_step"])
    ):
        dev_loss = math.inf
    if config.model == "full":
        dev_A = relative_deviation(ref["A"], np.asarray(res.A).reshape(0, config.d))
        dev_B = relative_deviation(ref["Delta"], res.Delta)
    else:
        dev_A = relative_deviation(ref["A"], res.A)
        dev_B = relative_deviation(ref["B"], res.B)
    return CrossCheckRow(config=config, device=ref["device"], threshold=float(threshold),
                         loss=dev_loss, A=dev_A, B=dev_B, diverged=bool(res.diverged),
                         seconds=seconds)


# ----------------------------------------------------------------------------- defaults
# (d, m, task rank k, LoRA rank r): r < k, r = k, r > k, and d < m.
_SHAPES = ((32, 24, 4, 2), (24, 16, 3, 3), (16, 20, 2, 6))

# Optimiser settings. Learning rates are chosen per rule so that every run makes progress
# and none diverges; SGD's is divided by s² (its step in W scales as η s², THEORY §3).
_OPTIMIZERS: tuple[dict[str, Any], ...] = (
    {"optimizer": "sgd", "momentum": 0.9, "lr": 0.1},
    {"optimizer": "adam", "lr": 0.01},
    {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01},
)

# Extra settings cycled through the configurations, so that L2 decay, Nesterov, the
# schedules, warm-up, label noise, a spectrum, the aligned task and the Gaussian init are
# each exercised somewhere without multiplying the number of runs.
_VARIANTS: tuple[dict[str, Any], ...] = (
    {},
    {"schedule": "cosine", "warmup": 10, "spectrum": 1.0},
    {"schedule": "linear", "warmup": 5, "decay": 1.0, "align": "aligned"},
    {"init": "gaussian", "spectrum": 0.5},
)
_SGD_VARIANTS: tuple[dict[str, Any], ...] = (
    {}, {"nesterov": True}, {"momentum": 0.0, "weight_decay": 0.01}, {"momentum": 0.5},
)


def default_configs() -> list[SimConfig]:
    """The configurations of ``signaldrift crosscheck``: every rule (and full fine-tuning)
    × SGD / Adam / AdamW × population and minibatch gradients × three small shapes
    (r < k, r = k, r > k), 60 steps each, with schedules, warm-up, weight decay, Nesterov,
    label noise, spectra, the aligned task and the Gaussian init spread over them.

    Returns:
        90 :class:`SimConfig` (about 15 s on two CPU cores, Numba compile included).
    """
    rules: tuple[dict[str, Any], ...] = (
        {"rule": "lora", "alpha": 16.0},
        {"rule": "rslora", "alpha": 8.0},
        {"rule": "lora-alpha", "coef": 4.0},
        {"rule": "fixed", "scale": 0.5},
        {"model": "full"},
    )
    out: list[SimConfig] = []
    i = 0
    for rule in rules:
        for opt in _OPTIMIZERS:
            for batch in (0, 16):
                for d, m, k, r in _SHAPES:
                    kw: dict[str, Any] = dict(d=d, m=m, task_rank=k, rank=r, steps=60,
                                              seed=i, batch=batch, **rule, **opt)
                    kw.update(_VARIANTS[i % len(_VARIANTS)])
                    if opt["optimizer"] == "sgd":
                        kw.update(_SGD_VARIANTS[(i // 2) % len(_SGD_VARIANTS)])
                    if batch:
                        kw["noise"] = 0.1
                    cfg = SimConfig(**kw)
                    if cfg.optimizer == "sgd":
                        # η s² fixed across rules (THEORY §3: SGD's W-step scales as η s²).
                        cfg = cfg.replace(lr=cfg.lr / max(scale_factor(cfg) ** 2, 1.0))
                    out.append(cfg)
                    i += 1
    return out


# ----------------------------------------------------------------------------- PEFT
class _PeftHost:
    """Builds the small torch module PEFT adapts: one ``nn.Linear(d, m, bias=False)``."""

    @staticmethod
    def build(torch: Any, d: int, m: int) -> Any:
        class Host(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.proj = torch.nn.Linear(d, m, bias=False)

            def forward(self, x: Any) -> Any:
                return self.proj(x)

        return Host()


def _peft_model(d: int, m: int, rank: int, alpha: float, use_rslora: bool) -> tuple[Any, Any]:
    """``get_peft_model`` on the host with ``LoraConfig(r, lora_alpha, use_rslora)``;
    returns the PEFT model and its LoRA layer (the adapted ``proj``)."""
    torch = _torch()
    peft = _peft()
    host = _PeftHost.build(torch, d, m)
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, use_rslora=use_rslora,
                          target_modules=["proj"], lora_dropout=0.0, bias="none")
    model = peft.get_peft_model(host, cfg)
    layer = next(mod for mod in model.modules() if hasattr(mod, "lora_A") and
                 hasattr(mod, "scaling") and "default" in getattr(mod, "lora_A"))
    return model, layer


def peft_scale(rank: int, alpha: float, use_rslora: bool) -> float:
    """PEFT's scaling factor for ``LoraConfig(r=rank, lora_alpha=alpha, use_rslora=...)``:
    the ``scaling["default"]`` of the LoRA layer ``get_peft_model`` puts on an
    ``nn.Linear`` (THEORY §2: α/r, or α/√r with ``use_rslora``)."""
    _, layer = _peft_model(rank, rank, rank, alpha, use_rslora)
    return float(layer.scaling["default"])


def peft_init_sample(d: int, rank: int, *, seed: int = 0) -> np.ndarray:
    """PEFT's default ``lora_A`` init (``init_lora_weights=True``) on an ``nn.Linear(d, ·)``
    with ``torch.manual_seed(seed)``: an (rank, d) array (THEORY §2: U(−1/√d, 1/√d))."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global torch RNG alone
        torch.manual_seed(seed)
        _, layer = _peft_model(d, rank, rank, float(rank), False)
        return layer.lora_A["default"].weight.detach().double().cpu().numpy().copy()


def peft_trajectory(config: SimConfig, *, w0: np.ndarray | None = None,
                    device: str | None = None) -> dict[str, Any]:
    """Train PEFT's own LoRA layer on the simulator's task, through its forward pass.

    ``get_peft_model`` with ``LoraConfig(r, lora_alpha, use_rslora)`` (rule ``lora``:
    ``use_rslora=False``; ``rslora``: ``True``) adapts a module holding
    ``nn.Linear(d, m, bias=False)`` whose weight is set to ``W₀`` (``w0``, default 0); the
    model is cast to float64, ``lora_A`` gets the simulator's ``A₀``, ``lora_B`` zeros.
    Targets are ``W⋆ = W₀ + Δ⋆`` (THEORY §1). The population loss is
    ``½‖f(Σ^½) − Σ^½W⋆ᵀ‖² = ½ tr(E Σ Eᵀ)``, ``f`` the PEFT model applied to the rows of
    ``Σ^½`` (basis inputs ``√λᵢ eᵢ``); the minibatch loss is ``(1/2n)‖f(X) − (X W⋆ᵀ + N)‖²``.
    Optimiser, schedule and minibatches as in :func:`run_torch`.

    Args:
        config: settings with ``model="lora"`` and ``rule`` ``"lora"`` or ``"rslora"``.
        w0: (m, d) base weight W₀ (it cancels: any value gives the same trajectory).
        device: torch device (see :func:`run_torch`).

    Returns:
        As :func:`run_torch` (``loss``, ``A``, ``B``, ``scale``: PEFT's own scaling, ...).

    Raises:
        ConfigError: a rule PEFT has no flag for, or torch / peft missing.
    """
    if config.model != "lora" or config.rule not in ("lora", "rslora"):
        raise ConfigError(f"rule: peft_trajectory needs model 'lora' and rule 'lora' or "
                          f"'rslora' (PEFT's two conventions), got {config.model!r}/{config.rule!r}")
    torch = _torch()
    dev = _device(torch, device)
    f64 = torch.float64
    task = make_task(config)
    d, m = config.d, config.m
    W0 = np.zeros((m, d)) if w0 is None else np.asarray(w0, dtype=np.float64)
    if W0.shape != (m, d):
        raise ConfigError(f"w0: must have shape (m, d) = ({m}, {d}), got {W0.shape}")
    model, layer = _peft_model(d, m, config.rank, config.alpha, config.rule == "rslora")
    model = model.to(device=dev, dtype=f64)
    A0, B0 = init_adapter(config, task)
    with torch.no_grad():
        layer.get_base_layer().weight.copy_(torch.as_tensor(W0, dtype=f64))
        layer.lora_A["default"].weight.copy_(torch.as_tensor(A0, dtype=f64))
        layer.lora_B["default"].weight.copy_(torch.as_tensor(B0, dtype=f64))
    wstar = torch.as_tensor(W0 + task.delta_star(), dtype=f64, device=dev)
    # rows of Σ^½ (feature basis) as inputs: ½‖f(Σ^½) − Σ^½W⋆ᵀ‖² = ½tr(EΣEᵀ)
    basis = torch.as_tensor(task.sigma_matrix(0.5), dtype=f64, device=dev)
    pop_target = basis @ wstar.T

    def residual(X: Any, N: Any) -> Any:
        if X is None:
            return model(basis) - pop_target
        return model(X) - (X @ wstar.T + N)

    out = _train(config, model, residual, dtype=f64, device=dev, task=task)
    out["A"] = layer.lora_A["default"].weight.detach().cpu().numpy().copy()
    out["B"] = layer.lora_B["default"].weight.detach().cpu().numpy().copy()
    out["Delta"] = None
    out.update(scale=float(layer.scaling["default"]), device=str(dev),
               torch_version=str(torch.__version__))
    return out


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> None:
    """Add the ``crosscheck`` subcommand to ``subparsers`` (sets ``func=handler``)."""
    p = subparsers.add_parser(
        "crosscheck",
        help="cross-check the simulator against a dense PyTorch implementation",
        description=(
            "Run every configuration of signaldrift.crosscheck.default_configs() through "
            "the simulator and through a dense float64 PyTorch implementation (autograd, "
            "torch.optim) and compare loss trajectories and final factors. Needs "
            "pip install 'signaldrift[torch]'."
        ),
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="torch device (auto: cuda when available, else cpu)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write the full report (every row and its config) as JSON")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"largest relative deviation that passes (default {DEFAULT_THRESHOLD:g} "
                        f"on cpu and on cuda)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the cross-check; print one row per configuration and, last, a one-line verdict.

    Returns:
        0 when every configuration passes, 1 otherwise.

    Raises:
        ConfigError: torch missing, CUDA unavailable, or a bad threshold.
    """
    json_path = getattr(args, "json", None)
    if json_path:  # checked before the (long) run, so that its verdict is not lost
        from ._paths import check_output_file

        check_output_file(json_path, flag="--json")
    torch = _torch()
    device = getattr(args, "device", "auto")
    dev = str(_device(torch, device))
    # The matrices are at most 32 × 24: threads only add synchronisation, and busy-waiting
    # OpenMP workers slow everything down on a shared machine.
    torch.set_num_threads(1)
    threshold = getattr(args, "threshold", None)
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"threshold: must be a finite number > 0, got {threshold!r}")
    rows: list[CrossCheckRow] = []
    t0 = time.perf_counter()
    for cfg in default_configs():
        row = compare(cfg, device=dev, threshold=threshold)
        rows.append(row)
        print(row.line(), flush=True)
    n_pass = sum(r.passed for r in rows)
    worst = max((r.worst for r in rows), default=0.0)
    ok = n_pass == len(rows)
    verdict = (f"crosscheck: {'PASS' if ok else 'FAIL'} {n_pass}/{len(rows)} configurations, "
               f"worst deviation {worst:.1e} (threshold {threshold:.0e}, device {dev})")
    if json_path:
        report = {"verdict": verdict, "passed": ok, "n_passed": n_pass, "n_total": len(rows),
                  "worst_deviation": _num(worst), "threshold": threshold, "device": dev,
                  "torch_version": str(torch.__version__),
                  "seconds": time.perf_counter() - t0,
                  "rows": [r.to_dict() for r in rows]}
    print(verdict, flush=True)
    sys.stdout.flush()
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return 0 if ok else 1

