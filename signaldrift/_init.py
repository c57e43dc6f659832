"""Adapter initialisation (THEORY.md §2), in the feature basis.

PiSSA (A₀, B₀ from the top-r SVD of W₀, with W₀ replaced by its residual) is not offered:
in this model W₀ cancels from every residual and has no distribution of its own (THEORY
§1), so PiSSA's effect would be whatever spectrum one invents for W₀. Give such a start
explicitly with ``simulate(config, A0=..., B0=...)``.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ._config import SimConfig
from ._seeding import rng_for

__all__ = ["init_adapter", "neg_initial_gradient_svd"]

# Below this many entries the top-r SVD of −G₀ is taken densely (one-off, not the hot loop).
_DENSE_SVD_ENTRIES = 4_000_000


def init_adapter(config: SimConfig, task=None, train: dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Initial factors ``(A₀, B₀)`` in the feature basis (THEORY §2).

    - ``peft``: ``A₀`` iid ``U(−1/√d, 1/√d)``, PEFT's default (Kaiming-uniform with a = √5
      on an (r, d) weight; variance 1/(3d)); ``B₀ = 0``.
    - ``gaussian``: ``A₀`` iid ``N(0, σ²)``, ``σ = config.effective_init_std``; ``B₀ = 0``.
    - ``gaussian-b``: ``A₀ = 0``, ``B₀`` iid ``N(0, σ²)`` (default σ = 1/√(3r), PEFT's
      variance for an (m, r) weight). The gradient of B vanishes while A = 0, so A moves
      first.
    - ``lora-one``: the spectral start of LoRA-One (Zhang, Liu & Chen, arXiv 2502.01235,
      "One-step full gradient suffices for low-rank fine-tuning"): with the top-r SVD
      ``[−G₀]_r = U_r S_r V_rᵀ`` of the negative full-fine-tuning gradient at W₀,
      ``B₀ = U_r S_r^½ / √γ`` and ``A₀ = S_r^½ V_rᵀ / √γ``, so ``s·B₀A₀ = (s/γ)[−G₀]_r``:
      one best rank-r gradient step of lr s/γ (the authors' README states the same
      equivalence for s = α/√r; γ = ``config.init_gamma``, their "stable_gamma", default
      128). G₀ is the population gradient ``−Δ⋆Σ`` with fresh samples and the training
      set's ``−(Δ⋆Σ̂ + NᵀX/N)`` with a fixed set. When r exceeds the rank of G₀, the
      extra rows of A₀ and columns of B₀ are 0 (and stay 0: a saddle).

    Seeded by ``(config.seed, "init")``. For ``model="full"`` returns ``A₀`` of shape (0, d)
    and ``B₀`` of shape (m, 0).

    Args:
        config: the settings.
        task: the :class:`~signaldrift.Task` (``lora-one`` needs it; default
            ``make_task(config)``).
        train: the fixed training set ``{"X": (N, d) eigen-coordinates, "noise": (N, m)}``
            (``lora-one`` with ``train_size`` > 0).

    Returns:
        ``A₀`` (r, d) and ``B₀`` (m, r), float64, C-contiguous, feature basis.
    """
    r = config.rank if config.model == "lora" else 0
    d, m = config.d, config.m
    if config.init != "lora-one":
        # A function of these settings alone; a sweep over lr or α draws it once per seed.
        key = (int(config.seed), config.init, d, m, r, float(config.effective_init_std))
        drawn = _DRAWN.get(key)
        if drawn is None:
            drawn = _random_init(config, r, d, m)
            if r * (d + m) <= _DRAWN_MAX_FLOATS:
                with _DRAWN_LOCK:
                    if len(_DRAWN) >= _DRAWN_SIZE:
                        _DRAWN.pop(next(iter(_DRAWN)))
                    _DRAWN[key] = drawn
        return drawn[0].copy(), drawn[1].copy()
    if task is None:
        from ._task import make_task

        task = make_task(config)
    Ur, S, Vr_eig = neg_initial_gradient_svd(task, r, train)
    root = np.sqrt(S / float(config.init_gamma))
    B0 = Ur * root[None, :]
    A0 = task.basis.to_features(root[:, None] * Vr_eig.T)
    return (np.ascontiguousarray(A0, dtype=np.float64),
            np.ascontiguousarray(B0, dtype=np.float64))


# Random initial factors drawn in this process, by their settings (bounded: small ones only).
_DRAWN: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_DRAWN_SIZE = 64
_DRAWN_LOCK = threading.Lock()
_DRAWN_MAX_FLOATS = 1 << 16


def _random_init(config: SimConfig, r: int, d: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``peft``, ``gaussian`` or ``gaussian-b`` factors from the stream
    ``(config.seed, "init")`` (see :func:`init_adapter`)."""
    rng = rng_for(config.seed, "init")
    B0 = np.zeros((m, r), dtype=np.float64)
    if config.init == "peft":
        bound = 1.0 / math.sqrt(d)
        A0 = rng.uniform(-bound, bound, size=(r, d))
    elif config.init == "gaussian":
        A0 = rng.normal(0.0, config.effective_init_std, size=(r, d))
    else:  # gaussian-b
        A0 = np.zeros((r, d))
        B0 = rng.normal(0.0, config.effective_init_std, size=(m, r))
    return (np.ascontiguousarray(A0, dtype=np.float64),
            np.ascontiguousarray(B0, dtype=np.float64))


def neg_initial_gradient_svd(task, r: int, train: dict | None = None):
    """Top-r singular triplets of −G₀ in Σ's eigen-coordinates (THEORY §2, LoRA-One).

    Population: ``−G₀ = U·diag(σ⋆)·(ΛV)ᵀ``, a rank-k matrix taken from the thin QR of
    ΛV and the SVD of a k×k matrix (never m×d). Training set (X rows in eigen-coordinates,
    label noise N): ``−Ĝ₀ = (1/N)·Yᵀ X`` with ``Y = X V diag(σ⋆) Uᵀ + N``; dense below
    4·10⁶ entries, else ARPACK (``svds``, deterministic start vector) on the operator.

    Returns:
        ``(U_r (m, r), S_r (r,), V_r (d, r))``, singular values decreasing, zero-padded
        when r exceeds the rank.
    """
    m, d = task.m, task.d
    if train is None:
        Qv, Rv = np.linalg.qr(task.V * task.lam[:, None])
        P, S, Wt = np.linalg.svd(task.sigma_star[:, None] * Rv.T)
        Uall, Vall = task.U @ P, Qv @ Wt.T
    else:
        X, N = train["X"], train["noise"]
        n = X.shape[0]
        Y = (X @ task.V) @ (task.sigma_star[:, None] * task.U.T) + N
        if m * d <= _DENSE_SVD_ENTRIES or r >= min(m, d) - 1:
            Uall, S, Vt = np.linalg.svd(Y.T @ X / n, full_matrices=False)
            Vall = Vt.T
        else:
            from scipy.sparse.linalg import LinearOperator, svds  # 0.1 s to import: here

            op = LinearOperator((m, d), dtype=np.float64,
                                matvec=lambda v: Y.T @ (X @ v) / n,
                                rmatvec=lambda u: X.T @ (Y @ u) / n)
            Uall, S, Vt = svds(op, k=r, v0=np.ones(min(m, d)) / math.sqrt(min(m, d)),
                               solver="arpack")
            order = np.argsort(-S, kind="stable")
            Uall, S, Vall = Uall[:, order], S[order], Vt[order].T
    q = min(r, S.shape[0])
    Ur, Sr, Vr = np.zeros((m, r)), np.zeros(r), np.zeros((d, r))
    Ur[:, :q], Sr[:q], Vr[:, :q] = Uall[:, :q], S[:q], Vall[:, :q]
    return Ur, Sr, Vr
