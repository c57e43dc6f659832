"""The reduced engine: exact LoRA dynamics on the overlaps (THEORY.md §7).

For isotropic ``Σ = λI`` and the population (full-batch) gradient, SGD with or without
momentum (torch.optim semantics, L2 weight decay, Nesterov), any scale s, per-factor learning
rates ``η_A = lr_t``, ``η_B = λ_r·lr_t`` (``loraplus_lr_ratio``) and any schedule, the
dynamics close on small matrices. Split A along the task's right factor V and B along U:

    A = N·Vᵀ + Ap  (Ap·V = 0),     B = U·M + Bp  (Uᵀ·Bp = 0),

so ``N = AV`` (r×k) and ``M = UᵀB`` (k×r) are THEORY §7's overlaps, and the orthogonal parts
enter only through their Gram matrices ``Pp = Ap·Apᵀ``, ``Qp = Bpᵀ·Bp`` (r×r);
``P = AAᵀ = N·Nᵀ + Pp`` and ``Q = BᵀB = MᵀM + Qp``. With momentum the buffers add
``Nf, Mh`` and the Gram blocks ``Kp, Rp, Jp, Tp``. One step (``step_momentum`` /
``step_sgd`` of :mod:`signaldrift._generated.reduced`, derived and verified in
``signaldrift derive reduced``) costs O(r²(r + k) + k²r) whatever d and m, and every record
of THEORY §3 (loss, ‖G‖, ‖S‖, ‖D‖, π, κ and the split of the loss change) is a trace of
these matrices. The loss ``½λ(‖Ec‖² + s²tr(MᵀM·Pp) + s²tr(Qp·NNᵀ) + s²tr(Qp·Pp))`` with
``Ec = s·M·N − diag(σ⋆)`` is a sum of non-negative terms (no cancellation as L → 0).

Initial overlaps (``overlap_init``): from the actual task and A₀, B₀ (``"factors"``: the run
replays a ``full`` run to rounding), or drawn from their exact law without forming any d- or
m-sized array (``"sampled"``, :func:`sample_overlaps`), so d = 10⁸ costs what d = 10³ does.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
from numba import njit

from ._config import ConfigError, SimConfig
from ._kernels import _ratio, _safe_sqrt
from ._generated.reduced import (
    drift_norm_sq,
    residual_drift_inner,
    residual_norm_sq,
    residual_signal_inner,
    signal_drift_inner,
    signal_norm_sq,
    step_momentum,
    step_sgd,
)
from ._result import SimulationResult
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._seeding import rng_for
from ._task import Task

__all__ = ["simulate_reduced", "initial_overlaps", "sample_overlaps", "Overlaps",
           "reduced_factor_bytes", "reduced_uses_factors", "REDUCED_RECORDS"]

#: The records this engine fills, in the row order of its kernels' ``rec`` array (THEORY §3);
#: the result maps them by name onto ``RECORD_NAMES`` of the full engine.
REDUCED_RECORDS = (
    "grad_norm", "signal_norm", "drift_norm", "drift_ratio", "progress", "descent",
    "curvature", "update_norm", "adapter_norm", "A_norm", "B_norm", "subspace_overlap",
    "descent_signal", "descent_drift", "curvature_signal", "curvature_cross",
    "curvature_drift",
)

#: ``overlap_init = "auto"`` draws the factors when they take at most this many bytes.
AUTO_FACTOR_BYTES = 64 * 2**20
#: Up to this many columns the Gram matrix of PEFT's uniform A₀ is drawn exactly (chunked);
#: above it, from the moment-matched Gaussian law (relative error of its law O(1/d)).
EXACT_UNIFORM_COLUMNS = 2**16

_STATUS_OK, _STATUS_DIVERGED = 0, 1


# =========================================================================== overlaps
class Overlaps:
    """The reduced state at t = 0 (module docstring): ``N`` (r×k), ``Pp`` (r×r),
    ``M`` (k×r), ``Qp`` (r×r), ``sigma_star`` (k,), ``lam`` (Σ = lam·I), and, when the
    factors were formed, the orthogonal parts ``Ap0`` (r×d, eigen-coordinates) and ``Bp0``
    (m×r) used to rebuild the final factors."""

    def __init__(self, N, Pp, M, Qp, sigma_star, lam, *, Ap0=None, Bp0=None):
        self.N = np.ascontiguousarray(N, dtype=np.float64)
        self.Pp = np.ascontiguousarray(Pp, dtype=np.float64)
        self.M = np.ascontiguousarray(M, dtype=np.float64)
        self.Qp = np.ascontiguousarray(Qp, dtype=np.float64)
        self.sigma_star = np.ascontiguousarray(sigma_star, dtype=np.float64)
        self.lam = float(lam)
        self.Ap0 = Ap0
        self.Bp0 = Bp0

    @property
    def P(self) -> np.ndarray:
        """AAᵀ = N·Nᵀ + Pp."""
        return self.N @ self.N.T + self.Pp

    @property
    def Q(self) -> np.ndarray:
        """BᵀB = MᵀM + Qp."""
        return self.M.T @ self.M + self.Qp


def reduced_factor_bytes(config: SimConfig) -> int:
    """Bytes of what ``overlap_init = "factors"`` draws: A₀ (r×d), B₀ (m×r), the task's
    U (m×k), V (d×k), λ (d) and, for ``basis = "random"``, its Givens rotations
    (2·d·⌈log₂ d⌉ pairs of 32 bytes). ``"sampled"`` needs none of them (O((r + k)²))."""
    d, m, r, k = config.d, config.m, config.rank, config.task_rank
    floats = r * d + m * r + m * k + d * k + d + k
    basis = 32 * d * max(1, math.ceil(math.log2(d))) if config.basis == "random" and d > 1 else 0
    return 8 * floats + basis


def reduced_uses_factors(config: SimConfig) -> bool:
    """Whether the reduced engine (or the flow) forms A₀, B₀ and the task for ``config``:
    ``overlap_init = "factors"``, or ``"auto"`` when :func:`reduced_factor_bytes` is at most
    :data:`AUTO_FACTOR_BYTES` (or d, m are too small to sample). Memory checks should count
    none of the d- or m-sized arrays when this is False."""
    if config.overlap_init == "factors":
        return True
    if config.overlap_init == "sampled":
        return False
    small = config.rank + config.task_rank
    return (reduced_factor_bytes(config) <= AUTO_FACTOR_BYTES
            or min(config.d, config.m) < small)


def _sigma_star(config: SimConfig) -> np.ndarray:
    """σ⋆_j ∝ j^(−δ) normalised to ½‖Δ⋆Σ^½‖² = ½ (isotropic Σ = I: Σσ⋆² = 1), as make_task."""
    j = np.arange(1, config.task_rank + 1, dtype=np.float64)
    sig = j ** (-float(config.decay))
    return sig / np.sqrt(np.sum(sig**2))


def _wishart(rng: np.random.Generator, p: int, n: int) -> np.ndarray:
    """A p×p Wishart(n, I) matrix by Bartlett's decomposition (exact, O(p²), any n ≥ p)."""
    Lb = np.zeros((p, p))
    for i in range(p):
        Lb[i, i] = math.sqrt(rng.chisquare(n - i))
        Lb[i, :i] = rng.standard_normal(i)
    return Lb @ Lb.T


def _uniform_gram(rng: np.random.Generator, r: int, n: int, a: float) -> np.ndarray:
    """Gram matrix X·Xᵀ of an r×n matrix X with iid U(−a, a) entries.

    Exact (X drawn, r×n ≤ r×2¹⁶ floats) for n ≤ 2¹⁶; above, the Gaussian
    with the exact mean and covariance (E = n·a²/3·I, Var of a diagonal entry n·4a⁴/45, of an
    off-diagonal one n·a⁴/9; ``signaldrift derive reduced``): by the central limit theorem
    the law differs from the exact one by O(1/n) in its cumulants relative to its spread,
    and the fluctuation itself is O(n^(−1/2)) relative to the mean.
    """
    if n <= EXACT_UNIFORM_COLUMNS:
        X = rng.uniform(-a, a, size=(r, n))
        return X @ X.T
    Z = rng.standard_normal((r, r))
    off = np.triu(Z, 1) * (math.sqrt(n) * a * a / 3.0)
    diag = np.diag(np.diag(Z) * math.sqrt(n * 4.0 / 45.0) * a * a)
    return n * a * a / 3.0 * np.eye(r) + off + off.T + diag


def _haar_rows(rng: np.random.Generator, r: int, k: int, d: int) -> np.ndarray:
    """The first r rows W of a Haar-distributed d×k orthonormal frame, without forming it:
    the frame is Z(ZᵀZ)^(−½) with Z iid N(0, 1) (d×k), and ZᵀZ = Z_rᵀZ_r + Wishart_k(d − r)."""
    Zr = rng.standard_normal((r, k))
    S = Zr.T @ Zr + _wishart(rng, k, d - r)
    w, Qs = np.linalg.eigh(S)
    return Zr @ (Qs * (1.0 / np.sqrt(w))[None, :]) @ Qs.T


def sample_overlaps(config: SimConfig) -> Overlaps:
    """The initial overlaps drawn from their exact law, never forming a d- or m-sized array.

    Seeded by ``(config.seed, "overlaps:<task seed>")``. With σ_A = ``effective_init_std``
    and a = 1/√d (THEORY §2, §7):

    - ``gaussian`` (A₀ iid N(0, σ_A²), B₀ = 0): A₀V and A₀(I − VVᵀ) are independent for any
      orthonormal V, so N has iid N(0, σ_A²) entries and Pp = σ_A²·Wishart_r(d − k, I)
      (exact, Bartlett); M = 0, Qp = 0.
    - ``peft`` (A₀ iid U(−a, a), variance 1/(3d)), ``align = "aligned"`` (V = the first k
      eigen-directions): N = the first k columns of A₀, iid U(−a, a); Pp = the Gram matrix of
      the other d − k columns. ``align = "random"`` (V Haar, independent of A₀):
      P = A₀A₀ᵀ = L·Lᵀ, N = L·W and Pp = L(I − WWᵀ)Lᵀ with W the first r rows of a Haar d×k
      frame (exact given P). P is drawn exactly for d ≤ 2¹⁶ and from the moment-matched
      Gaussian above (E P = I/3, Var P_ii = 4/(45d), Var P_ij = 1/(9d)), i.e.
      P ≈ I/3 + O(d^(−½)) and N has entries of variance 1/(3d).
    - ``gaussian-b`` (A₀ = 0, B₀ iid N(0, σ_B²)): N = 0, Pp = 0, M iid N(0, σ_B²),
      Qp = σ_B²·Wishart_r(m − k, I) (exact).
    - ``lora-one``: deterministic. With Σ = I, −G₀ = U·diag(σ⋆)·Vᵀ, so the top-r SVD is
      (U, σ⋆, V) restricted to the r largest σ⋆ (ties: the first), and B₀A₀ = [−G₀]_r/γ
      gives M = [diag(√(σ⋆/γ)); 0] (k×r), N = Mᵀ, Pp = Qp = 0 (the same run as the full
      engine's up to a rotation A → OA, B → BOᵀ, which changes no record).

    Args:
        config: the settings (isotropic Σ: λ = 1).

    Returns:
        The :class:`Overlaps` (no factors).
    """
    d, m, r, k = config.d, config.m, config.rank, config.task_rank
    if min(d, m) < r + k:
        raise ConfigError(f"overlap_init: 'sampled' needs d and m >= rank + task_rank = "
                          f"{r + k}, got d = {d}, m = {m}; use 'factors'")
    rng = rng_for(config.seed, f"overlaps:{config.effective_task_seed}")
    sig = _sigma_star(config)
    N = np.zeros((r, k))
    Pp = np.zeros((r, r))
    M = np.zeros((k, r))
    Qp = np.zeros((r, r))
    if config.init == "gaussian":
        sa = config.effective_init_std
        N = sa * rng.standard_normal((r, k))
        Pp = sa * sa * _wishart(rng, r, d - k)
    elif config.init == "peft":
        a = 1.0 / math.sqrt(d)
        if config.align == "aligned":
            N = rng.uniform(-a, a, size=(r, k))
            Pp = _uniform_gram(rng, r, d - k, a)
        else:
            P = _uniform_gram(rng, r, d, a)
            Lc = np.linalg.cholesky(P)
            W = _haar_rows(rng, r, k, d)
            N = Lc @ W
            Pp = Lc @ (np.eye(r) - W @ W.T) @ Lc.T
            Pp = 0.5 * (Pp + Pp.T)
    elif config.init == "gaussian-b":
        sb = config.effective_init_std
        M = sb * rng.standard_normal((k, r))
        Qp = sb * sb * _wishart(rng, r, m - k)
    else:  # lora-one
        order = np.argsort(-sig, kind="stable")
        for i in range(min(r, k)):
            j = order[i]
            root = math.sqrt(sig[j] / float(config.init_gamma))
            M[j, i] = root
            N[i, j] = root
    return Overlaps(N, Pp, M, Qp, sig, 1.0)


def _draw_factors(config: SimConfig, task: Task):
    from ._init import init_adapter

    if len(inspect.signature(init_adapter).parameters) >= 2:
        return init_adapter(config, task)
    return init_adapter(config)


def _check_array(name: str, x, shape) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != shape:
        raise ConfigError(f"{name}: must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ConfigError(f"{name}: must be finite (no NaN or inf)")
    return np.ascontiguousarray(a)


def initial_overlaps(config: SimConfig, *, task: Task | None = None,
                     A0: np.ndarray | None = None, B0: np.ndarray | None = None):
    """The initial overlaps of a reduced run and what they came from.

    With ``task``, ``A0`` or ``B0`` given, or when :func:`reduced_uses_factors` holds, the
    task and the factors are drawn as the full engine draws them (``make_task``,
    ``init_adapter``; A₀ in the feature basis) and the overlaps are computed from them in
    Σ's eigen-coordinates: ``N = Ã₀V``, ``Ap = Ã₀ − N·Vᵀ``, ``M = UᵀB₀``, ``Bp = B₀ − U·M``
    (Ã₀ = A₀Q). Otherwise :func:`sample_overlaps`.

    Returns:
        ``(overlaps, info)`` with ``info``: ``mode`` (``"factors"``/``"sampled"``),
        ``task``, ``A0``, ``B0`` (``None`` when sampled), ``task_source``.

    Raises:
        ConfigError: a given array does not fit, a given task's Σ is not isotropic, or
            arrays are given with ``overlap_init = "sampled"``.
    """
    given = task is not None or A0 is not None or B0 is not None
    if given and config.overlap_init == "sampled":
        raise ConfigError("overlap_init: 'sampled' draws the overlaps from their law and "
                          "cannot use a given task, A0 or B0; set overlap_init = 'factors'")
    if not given and not reduced_uses_factors(config):
        return sample_overlaps(config), {"mode": "sampled", "task": None, "A0": None,
                                         "B0": None, "task_source": "generated"}
    from ._task import make_task

    if task is None:
        task = make_task(config)
    else:
        if not isinstance(task, Task):
            raise ConfigError(f"task: must be a signaldrift.Task, got {type(task).__name__}")
        task.check_config(config)
    lam = np.asarray(task.lam, dtype=np.float64)
    if float(lam.max() - lam.min()) > 1e-12 * max(float(np.abs(lam).max()), 1e-300):
        raise ConfigError(f"task: engine {config.engine!r} needs an isotropic Σ (all "
                          f"eigenvalues equal); this task's range from {lam.min():.6g} to "
                          f"{lam.max():.6g}")
    r, d, m = config.rank, config.d, config.m
    if A0 is None or B0 is None:
        dA0, dB0 = _draw_factors(config, task)
        A0 = dA0 if A0 is None else A0
        B0 = dB0 if B0 is None else B0
    A0 = _check_array("A0", A0, (r, d))
    B0 = _check_array("B0", B0, (m, r))
    A_eig = task.basis.to_eigen(A0)
    V, U = task.V, task.U
    N = A_eig @ V
    Ap = A_eig - N @ V.T
    M = U.T @ B0
    Bp = B0 - U @ M
    ov = Overlaps(N, Ap @ Ap.T, M, Bp.T @ Bp, task.sigma_star, float(lam.mean()),
                  Ap0=np.ascontiguousarray(Ap), Bp0=np.ascontiguousarray(Bp))
    return ov, {"mode": "factors", "task": task, "A0": A0, "B0": B0,
                "task_source": "user" if given else "generated"}


# =========================================================================== kernels
@njit(cache=True, inline="always")
def _loss(s, lam, N, Pp, M, Qp, Sg):
    """(L, ‖E‖², Ec): L = ½λ‖E‖², cancellation-free (module docstring)."""
    Ec = s * (M @ N) - Sg
    e2 = residual_norm_sq(s, Ec, M, Pp, N, Qp)
    return 0.5 * lam * e2, e2, Ec


@njit(cache=True, inline="always")
def _fill_records(rec, i, s, lam, ratio, e2, Ec, N, Pp, M, Qp, dN, dApAp, dApdAp, dM,
                  dBpBp, dBpdBp, C0, bal):
    """Write THEORY §3's records at row i (order :data:`REDUCED_RECORDS`) and the drift of
    λ_r·AAᵀ − BᵀB from its initial value."""
    sig2 = signal_norm_sq(s, N, Pp, M, Qp, dN, dApAp, dApdAp, dM, dBpBp, dBpdBp)
    dr2 = drift_norm_sq(s, dN, dApdAp, dM, dBpdBp)
    sd = signal_drift_inner(s, N, M, dN, dApAp, dApdAp, dM, dBpBp, dBpdBp)
    es = residual_signal_inner(s, Ec, N, Pp, M, Qp, dN, dApAp, dM, dBpBp)
    ed = residual_drift_inner(s, Ec, N, M, dN, dApAp, dM, dBpBp)
    P = N @ N.T + Pp
    Q = M.T @ M + Qp
    r = N.shape[0]
    k = N.shape[1]
    gn = lam * _safe_sqrt(e2)
    sn = _safe_sqrt(sig2)
    dn = _safe_sqrt(dr2)
    des = lam * (es + ed)
    rec[0, i] = gn
    rec[1, i] = sn
    rec[2, i] = dn
    rec[3, i] = _ratio(dn, sn)
    rec[4, i] = -des / gn if gn > 0.0 else 0.0
    rec[5, i] = des
    rec[6, i] = 0.5 * lam * (sig2 + 2.0 * sd + dr2)
    rec[7, i] = _safe_sqrt(sig2 + 2.0 * sd + dr2)
    rec[8, i] = s * _safe_sqrt(np.trace(Q @ P))
    rec[9, i] = _safe_sqrt(np.trace(P))
    rec[10, i] = _safe_sqrt(np.trace(Q))
    rec[11, i] = np.trace(np.linalg.pinv(P) @ (N @ N.T)) / min(r, k)
    rec[12, i] = lam * es
    rec[13, i] = lam * ed
    rec[14, i] = 0.5 * lam * sig2
    rec[15, i] = lam * sd
    rec[16, i] = 0.5 * lam * dr2
    bal[i] = np.sqrt(np.sum((ratio * P - Q - C0) ** 2))


@njit(cache=True)
def reduced_loop(s, lam, wd, momentum, mu, nesterov, ratio, lrs, N, Nf, Pp, Kp, Rp, M, Mh,
                 Qp, Jp, Tp, Sg, track, TA, TB, record_every, bound, loss, rec, bal, C0):
    """Advance the overlaps over steps [0, len(lrs)) in place: SGD, with torch's momentum
    buffer (and Nesterov) when ``momentum``.

    Without momentum the step is :func:`step_sgd`; ``Nf``, ``Kp``, ``Rp``, ``Mh``, ``Jp``,
    ``Tp`` are not read, and ``TA`` (r×r), ``TB`` (r×r) accumulate the transfer of the
    orthogonal parts (Ap_t = TA·Ap₀, Bp_t = Bp₀·TB) when ``track``. With momentum the step
    is :func:`step_momentum`, ``c_g·g + c_f·buf`` with ``c_g = 1 + νμ``,
    ``c_f = μ(1 − ν + νμ)``; the buffers (Nf … Tp) start at 0 (torch's ``buf = g`` at the
    first step), ``TA`` is 2r×r ([Ap_t; Fp_t] = TA·Ap₀) and ``TB`` r×2r
    ([Bp_t, Hp_t] = Bp₀·TB). One kernel for both, so the loss and the records
    (``inline="always"``) are compiled once.

    Returns ``(status, t)`` as the full engine's kernels: ``(0, steps)``, or ``(1, t)`` when
    the loss at step t is non-finite or above ``bound`` (the state is left at step t).
    """
    r = N.shape[0]
    cg = 1.0 + mu if nesterov else 1.0
    cf = mu * mu if nesterov else mu
    for t in range(lrs.shape[0]):
        L, e2, Ec = _loss(s, lam, N, Pp, M, Qp, Sg)
        record = t % record_every == 0
        i = t // record_every
        if record:
            loss[i] = L
        if not (np.isfinite(L) and L <= bound):
            return _STATUS_DIVERGED, t
        if momentum:
            ea, fa = lrs[t] * cg, lrs[t] * cf
            eb, fb = ratio * ea, ratio * fa
            (N1, Nf1, Pp1, Kp1, Rp1, M1, Mh1, Qp1, Jp1, Tp1, dN, dApAp, dApdAp, dM, dBpBp,
             dBpdBp, CA, DA, CB, DB) = step_momentum(s, lam, wd, mu, ea, fa, eb, fb, N, Nf,
                                                     Pp, Kp, Rp, M, Mh, Qp, Jp, Tp, Sg)
        else:
            ea = lrs[t]
            eb = ratio * lrs[t]
            (N1, Pp1, M1, Qp1, dN, dApAp, dApdAp, dM, dBpBp, dBpdBp, CA,
             CB) = step_sgd(s, lam, wd, ea, eb, N, Pp, M, Qp, Sg)
        if record:
            _fill_records(rec, i, s, lam, ratio, e2, Ec, N, Pp, M, Qp, dN, dApAp, dApdAp,
                          dM, dBpBp, dBpdBp, C0, bal)
        if momentum:
            if track:
                top = TA[:r].copy()
                bot = TA[r:].copy()
                TA[:r] = CA @ top - fa * bot
                TA[r:] = DA @ top + mu * bot
                left = TB[:, :r].copy()
                right = TB[:, r:].copy()
                TB[:, :r] = left @ CB - fb * right
                TB[:, r:] = left @ DB + mu * right
            Nf[...] = Nf1
            Kp[...] = Kp1
            Rp[...] = 0.5 * (Rp1 + Rp1.T)
            Mh[...] = Mh1
            Jp[...] = Jp1
            Tp[...] = 0.5 * (Tp1 + Tp1.T)
        elif track:
            TA[...] = CA @ TA
            TB[...] = TB @ CB
        N[...] = N1
        Pp[...] = 0.5 * (Pp1 + Pp1.T)
        M[...] = M1
        Qp[...] = 0.5 * (Qp1 + Qp1.T)
    return _STATUS_OK, lrs.shape[0]


# =========================================================================== driver
def _record_grid(config: SimConfig):
    from ._simulate import record_grid

    return record_grid(config)


def _records_dict(loss: np.ndarray, rec: np.ndarray) -> dict[str, np.ndarray]:
    """``loss`` and every name of the full engine's ``RECORD_NAMES`` (NaN for a name this
    engine does not compute)."""
    from ._kernels import RECORD_NAMES

    mine = {name: rec[q] for q, name in enumerate(REDUCED_RECORDS)}
    out = {"loss": loss}
    for name in RECORD_NAMES:
        out[name] = mine.get(name, np.full(rec.shape[1], np.nan))
    return out


def _empty_sharpness() -> dict[str, np.ndarray]:
    return {"step": np.zeros(0, dtype=np.int64), "lambda_max": np.zeros(0),
            "precond_lambda_max": np.zeros(0)}


def simulate_reduced(config: SimConfig, *, task: Task | None = None,
                     A0: np.ndarray | None = None, B0: np.ndarray | None = None
                     ) -> SimulationResult:
    """Run one simulation with the exact overlap dynamics of THEORY §7 (``engine="reduced"``).

    Same settings, records, divergence rule and archive schema as the full engine
    (:func:`signaldrift.simulate`); ``config.engine`` must be ``"reduced"`` (or ``"flow"``,
    which runs :func:`signaldrift.simulate_flow`). It takes isotropic Σ (spectrum 0), the
    population gradient (batch 0), SGD with or without momentum and Nesterov, L2 weight
    decay, any rule, scale, ``loraplus_lr_ratio``, schedule and init; the settings it cannot
    take are refused by :class:`SimConfig` with a one-line reason.

    Records (THEORY §3), all from r×r, r×k and k×k matrices: ``loss`` L = ½λ‖E‖²,
    ``grad_norm`` λ‖E‖, ``signal_norm``, ``drift_norm``, ``drift_ratio``, ``progress``,
    ``descent`` = λ(⟨E,S⟩ + ⟨E,D⟩), ``curvature`` ½λ‖ΔW‖², ``update_norm``,
    ``adapter_norm`` s·√tr(QP), ``A_norm`` √tr P, ``B_norm`` √tr Q, ``subspace_overlap``
    tr(P⁺NNᵀ)/min(r, k) and the split of the loss change.

    The result: with the factors formed (``overlap_init`` ``"factors"``, or ``"auto"`` at
    small widths) it holds the task, A₀, B₀ and the final A, B rebuilt from the overlaps
    (A = N·Vᵀ + TA·Ap₀, in the feature basis), so it replays a ``full`` run; with sampled
    overlaps ``task``, ``A0``, ``A``, ``B``, ``B0`` are ``None`` (archive key
    ``arrays_stored`` false). ``extras``: ``overlap_init``, ``lam``, ``sigma_star``, the
    initial and final ``N``, ``M``, ``Pp``, ``Qp``, ``P``, ``Q`` (``*0`` for t = 0), and
    ``balance_drift`` ‖C_t − C_0‖ (C = λ_r·AAᵀ − BᵀB) at the recorded steps.

    Args:
        config: the settings.
        task, A0, B0: your own task (isotropic Σ) and initial factors (A0 in the feature
            basis), as for :func:`signaldrift.simulate`.

    Returns:
        The :class:`SimulationResult`.

    Example:
        >>> import signaldrift as sd
        >>> cfg = sd.SimConfig(d=10**8, m=10**8, rank=4, task_rank=4, optimizer="sgd",
        ...                    lr=0.5, alpha=8.0, spectrum=0.0, steps=100, engine="reduced")
        >>> res = sd.simulate(cfg)          # no 10⁸-sized array is formed
        >>> res.task is None and res.final_loss < res.loss[0]
        True
    """
    if not isinstance(config, SimConfig):
        raise ConfigError(f"config: must be a SimConfig (signaldrift.SimConfig(...)), got "
                          f"{type(config).__name__}")
    if config.engine == "flow":
        from ._flow import simulate_flow

        return simulate_flow(config, task=task, A0=A0, B0=B0)
    if config.engine != "reduced":
        raise ConfigError(f"engine: simulate_reduced needs engine 'reduced', got "
                          f"{config.engine!r}")
    ov, info = initial_overlaps(config, task=task, A0=A0, B0=B0)
    s = scale_factor(config)
    lrs = np.ascontiguousarray(learning_rates(config), dtype=np.float64)
    step, loss_step = _record_grid(config)
    loss = np.full(loss_step.size, np.nan)
    rec = np.full((len(REDUCED_RECORDS), step.size), np.nan)
    bal = np.full(step.size, np.nan)
    r, k = config.rank, config.task_rank
    ratio = float(config.loraplus_lr_ratio)
    N, Pp, M, Qp = ov.N.copy(), ov.Pp.copy(), ov.M.copy(), ov.Qp.copy()
    Sg = np.diag(ov.sigma_star)
    C0 = ratio * ov.P - ov.Q
    track = info["mode"] == "factors"
    momentum = float(config.momentum) != 0.0
    if momentum:
        Nf, Mh = np.zeros((r, k)), np.zeros((k, r))
        Kp, Rp, Jp, Tp = (np.zeros((r, r)) for _ in range(4))
        TA = np.vstack([np.eye(r), np.zeros((r, r))])
        TB = np.hstack([np.eye(r), np.zeros((r, r))])
        buffers = {"Nf": Nf, "Mh": Mh, "Kp": Kp, "Rp": Rp, "Jp": Jp, "Tp": Tp}
    else:
        Nf = Kp = Rp = Mh = Jp = Tp = np.zeros((0, 0))  # not read without momentum
        TA, TB = np.eye(r), np.eye(r)
        buffers = {}
    status, t = reduced_loop(s, ov.lam, float(config.weight_decay), momentum,
                             float(config.momentum), bool(config.nesterov), ratio, lrs, N, Nf,
                             Pp, Kp, Rp, M, Mh, Qp, Jp, Tp, Sg, track, TA, TB,
                             int(config.record_every), float(config.divergence_bound), loss,
                             rec, bal, C0)

    diverged, diverged_step = status == _STATUS_DIVERGED, int(t) if status else -1
    final = float(_loss(s, ov.lam, N, Pp, M, Qp, Sg)[0])
    diverged_loss = float("nan")
    if diverged:
        diverged_loss = final
    elif not (np.isfinite(final) and final <= config.divergence_bound):
        diverged, diverged_step, diverged_loss = True, config.steps, final
    else:
        loss[-1] = final
    if diverged:
        loss[loss_step >= diverged_step] = np.nan
        rec[:, step >= diverged_step] = np.nan
        bal[step >= diverged_step] = np.nan

    A_fin = B_fin = None
    if track:
        task_ = info["task"]
        A_eig = N @ task_.V.T + TA[:r] @ ov.Ap0
        A_fin = task_.basis.to_features(A_eig)
        B_fin = task_.U @ M + ov.Bp0 @ TB[:, :r]
    final_ov = Overlaps(N, Pp, M, Qp, ov.sigma_star, ov.lam)
    extras = {
        "overlap_init": np.array(info["mode"]), "lam": np.array(ov.lam),
        "sigma_star": ov.sigma_star,
        "N0": ov.N, "M0": ov.M, "Pp0": ov.Pp, "Qp0": ov.Qp, "P0": ov.P, "Q0": ov.Q,
        "N": N, "M": M, "Pp": Pp, "Qp": Qp, "P": final_ov.P, "Q": final_ov.Q,
        "balance_drift": bal, **buffers,
    }
    noise = float(info["task"].noise) if info["task"] is not None else float(config.noise)
    return SimulationResult(
        config=config, task=info["task"], scale=s, A0=info["A0"], A=A_fin, B=B_fin,
        step=step, loss_step=loss_step, records=_records_dict(loss, rec), diverged=diverged,
        diverged_step=diverged_step, diverged_loss=diverged_loss, sharpness=_empty_sharpness(),
        Delta=None, B0=info["B0"], task_source=info["task_source"],
        noise_floor=0.5 * config.m * noise**2, extras=extras,
    )
