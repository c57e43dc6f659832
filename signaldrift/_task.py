"""The synthetic linear-regression task (THEORY.md §1), generated or given as arrays."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ._basis import Basis
from ._config import ConfigError, SimConfig
from ._seeding import rng_for

__all__ = ["Task", "make_task", "task_cache"]

# Tolerances of the checks of user-given arrays (relative to the arrays' scale).
_ORTHO_TOL = 1e-8
_SYM_TOL = 1e-10
_PSD_TOL = 1e-10


@dataclass(frozen=True)
class Task:
    """A regression task ``y = W⋆ x + ε`` with ``W⋆ = W₀ + Δ⋆`` (THEORY §1).

    The task is held in Σ's eigen-coordinates, where Σ = diag(λ); ``basis`` maps them to
    the feature coordinates the student sees (Σ_features = Q diag(λ) Qᵀ).

    Attributes:
        lam: (d,) eigenvalues λ of Σ.
        U: (m, k) orthonormal left factor of Δ⋆.
        sigma_star: (k,) singular values σ⋆ of Δ⋆.
        V: (d, k) orthonormal right factor of Δ⋆ in Σ's eigen-coordinates
            (``V_features() = Q V``).
        noise: label-noise standard deviation σ.
        basis: the feature basis Q (:class:`~signaldrift._basis.Basis`); ``None`` means
            the eigenbasis (Q = I), so ``Task(lam=…, U=…, sigma_star=…, V=…, noise=…)``
            is a task given in its eigenbasis, as before.

    ``Δ⋆ = U diag(σ⋆) Vᵀ Qᵀ`` (features) is never formed by the simulator (use
    :meth:`delta_star`). W₀ cancels from every residual, so it is not stored. Build a task
    from your own arrays with :meth:`from_arrays`.
    """

    lam: np.ndarray
    U: np.ndarray
    sigma_star: np.ndarray
    V: np.ndarray
    noise: float
    basis: Basis | None = None

    def __post_init__(self) -> None:
        if self.basis is None:
            object.__setattr__(self, "basis", Basis.eigen(self.lam.shape[0]))

    @property
    def d(self) -> int:
        return self.lam.shape[0]

    @property
    def m(self) -> int:
        return self.U.shape[0]

    @property
    def k(self) -> int:
        return self.sigma_star.shape[0]

    def V_features(self) -> np.ndarray:
        """(d, k) right factor of Δ⋆ in the feature basis, Q V."""
        return self.basis.to_features(self.V.T).T

    def delta_star(self, *, features: bool = True) -> np.ndarray:
        """The dense (m, d) task update Δ⋆ = U diag(σ⋆) Vᵀ, in the feature basis (or in
        Σ's eigen-coordinates with ``features=False``); for references and tests."""
        V = self.V_features() if features else self.V
        return (self.U * self.sigma_star) @ V.T

    def sigma_matrix(self, power: float = 1.0, *, features: bool = True) -> np.ndarray:
        """The dense (d, d) Σ^power = Q diag(λ^power) Qᵀ (features) or diag(λ^power)."""
        D = np.diag(self.lam ** power)
        if not features or self.basis.kind == "eigen":
            return D
        Q = self.basis.matrix()
        return Q @ D @ Q.T

    def initial_loss(self) -> float:
        """½‖Δ⋆Σ^½‖² = ½ tr(diag(σ⋆) VᵀΣV diag(σ⋆) UᵀU), without forming Δ⋆."""
        vsv = (self.V * self.lam[:, None]).T @ self.V
        utu = self.U.T @ self.U
        sg = np.diag(self.sigma_star)
        return 0.5 * float(np.trace(sg @ vsv @ sg @ utu))

    def check_config(self, config: SimConfig) -> None:
        """Raise :class:`ConfigError` unless the config's shape settings match the task."""
        for name, mine in (("d", self.d), ("m", self.m), ("task_rank", self.k)):
            if getattr(config, name) != mine:
                raise ConfigError(f"task: the task has {name} = {mine} but the config has "
                                  f"{name} = {getattr(config, name)}; set {name} = {mine}")
        if float(config.noise) != float(self.noise):
            raise ConfigError(f"task: the task has noise = {self.noise:g} but the config has "
                              f"noise = {config.noise:g}; set noise = {self.noise:g}")

    # ------------------------------------------------------------------ arrays
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Archive keys: ``lam``, ``U``, ``sigma_star``, ``V`` (eigen-coordinates),
        ``task_noise`` and the basis (``basis_kind`` and its arrays)."""
        out = {"lam": self.lam, "U": self.U, "sigma_star": self.sigma_star, "V": self.V,
               "task_noise": np.array(float(self.noise))}
        out.update(self.basis.to_arrays())
        return out

    @classmethod
    def from_archive(cls, a: dict, config: SimConfig) -> "Task":
        lam = np.asarray(a["lam"])
        return cls(lam=lam, U=a["U"], sigma_star=a["sigma_star"], V=a["V"],
                   noise=float(a.get("task_noise", config.noise)),
                   basis=Basis.from_arrays(a, lam.shape[0]))

    @classmethod
    def from_arrays(cls, *, sigma: np.ndarray | None = None, lam: np.ndarray | None = None,
                    basis: np.ndarray | None = None, delta_star: np.ndarray | None = None,
                    U: np.ndarray | None = None, sigma_star: np.ndarray | None = None,
                    V: np.ndarray | None = None, noise: float = 0.0) -> "Task":
        """A task from your own arrays, all in the feature basis (THEORY §1).

        Give the input covariance either as ``sigma`` (d×d symmetric positive
        semi-definite; its eigenvectors become the basis) or as its eigenvalues ``lam``
        (d,) with an optional orthogonal ``basis`` (d×d, columns are the eigenvectors;
        default: the identity). Give the task update either as ``delta_star`` (m×d dense;
        factorised once by an SVD, keeping singular values above 1e-12 of the largest) or
        by its factors ``U`` (m×k, orthonormal columns), ``sigma_star`` (k,) > 0 and ``V``
        (d×k, orthonormal columns, feature coordinates). Nothing is normalised: the
        initial loss is what the arrays give.

        Raises:
            ConfigError: naming the argument, for wrong shapes, non-finite values, a
                non-symmetric or non-PSD Σ, a non-orthogonal basis or factor, a rank above
                min(m, d), or a missing or doubly given array.

        Example:
            >>> import numpy as np, signaldrift as sd
            >>> rng = np.random.default_rng(0)
            >>> task = sd.Task.from_arrays(lam=np.linspace(2, 0.1, 16),
            ...                            delta_star=rng.standard_normal((8, 16)))
            >>> (task.d, task.m, task.k)
            (16, 8, 8)
        """
        if (sigma is None) == (lam is None):
            raise ConfigError("sigma: give exactly one of sigma (d×d matrix) and lam "
                              "(its eigenvalues)")
        if sigma is not None:
            if basis is not None:
                raise ConfigError("basis: give basis with lam, not with sigma (a full Σ "
                                  "brings its own eigenvectors)")
            S = _array("sigma", sigma, ndim=2)
            d = S.shape[0]
            if S.shape != (d, d):
                raise ConfigError(f"sigma: must be square (d×d), got shape {S.shape}")
            scale = max(float(np.abs(S).max()), 1e-300)
            if float(np.abs(S - S.T).max()) > _SYM_TOL * scale:
                raise ConfigError("sigma: must be symmetric")
            w, Q = np.linalg.eigh(0.5 * (S + S.T))
            if w.min() < -_PSD_TOL * max(abs(w.max()), 1e-300):
                raise ConfigError(f"sigma: must be positive semi-definite (smallest "
                                  f"eigenvalue {w.min():.3g})")
            order = np.argsort(-w, kind="stable")
            lam_arr = np.clip(w[order], 0.0, None)
            b = Basis.from_matrix(Q[:, order])
        else:
            lam_arr = _array("lam", lam, ndim=1)
            d = lam_arr.shape[0]
            if d < 1 or lam_arr.min() < 0.0:
                raise ConfigError("lam: must be a non-empty vector of eigenvalues >= 0")
            if basis is None:
                b = Basis.eigen(d)
            else:
                Q = _array("basis", basis, ndim=2)
                if Q.shape != (d, d):
                    raise ConfigError(f"basis: must be (d, d) = ({d}, {d}), got {Q.shape}")
                if float(np.abs(Q.T @ Q - np.eye(d)).max()) > _ORTHO_TOL:
                    raise ConfigError("basis: must be orthogonal (QᵀQ = I)")
                b = Basis.from_matrix(Q)
        if delta_star is not None:
            if U is not None or sigma_star is not None or V is not None:
                raise ConfigError("delta_star: give either delta_star or its factors "
                                  "(U, sigma_star, V), not both")
            D = _array("delta_star", delta_star, ndim=2)
            if D.shape[1] != d:
                raise ConfigError(f"delta_star: must have d = {d} columns, got {D.shape}")
            Uf, sv, Vt = np.linalg.svd(D, full_matrices=False)
            keep = sv > 1e-12 * max(sv.max(initial=0.0), 1e-300)
            if not keep.any():
                raise ConfigError("delta_star: must not be zero (rank >= 1)")
            U_arr, s_arr, V_feat = Uf[:, keep], sv[keep], Vt[keep].T
        else:
            if U is None or sigma_star is None or V is None:
                raise ConfigError("delta_star: give delta_star (m×d) or all of U, "
                                  "sigma_star and V")
            U_arr = _array("U", U, ndim=2)
            s_arr = _array("sigma_star", sigma_star, ndim=1)
            V_feat = _array("V", V, ndim=2)
            m, k = U_arr.shape
            if k > min(m, d):
                raise ConfigError(f"U: rank k = {k} is above min(m, d) = {min(m, d)}")
            if s_arr.shape != (k,) or (s_arr <= 0).any():
                raise ConfigError(f"sigma_star: must be {k} values > 0, got {s_arr.shape}")
            if V_feat.shape != (d, k):
                raise ConfigError(f"V: must be (d, k) = ({d}, {k}), got {V_feat.shape}")
            for name, F in (("U", U_arr), ("V", V_feat)):
                if float(np.abs(F.T @ F - np.eye(k)).max()) > _ORTHO_TOL:
                    raise ConfigError(f"{name}: must have orthonormal columns")
        if not (isinstance(noise, (int, float, np.integer, np.floating))
                and np.isfinite(noise) and noise >= 0):
            raise ConfigError(f"noise: must be a finite number >= 0, got {noise!r}")
        V_eig = b.to_eigen(V_feat.T).T
        return cls(lam=np.ascontiguousarray(lam_arr), U=np.ascontiguousarray(U_arr),
                   sigma_star=np.ascontiguousarray(s_arr), V=np.ascontiguousarray(V_eig),
                   noise=float(noise), basis=b)


def _array(name: str, x, *, ndim: int) -> np.ndarray:
    try:
        a = np.array(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: must be a numeric array") from None
    if a.ndim != ndim:
        raise ConfigError(f"{name}: must be a {ndim}-d array, got {a.ndim}-d")
    if a.size == 0:
        raise ConfigError(f"{name}: must not be empty")
    if not np.isfinite(a).all():
        raise ConfigError(f"{name}: must be finite (no NaN or inf)")
    return a


def _haar_orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n×k matrix with Haar-distributed orthonormal columns (QR with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))[None, :]


# The tasks made inside `task_cache()` blocks, by the settings make_task reads (None outside).
_CACHE: dict[tuple, Task] | None = None
_CACHE_DEPTH = 0
_CACHE_LOCK = threading.Lock()
#: Most tasks a cache holds (a sweep's results hold their tasks anyway).
_CACHE_SIZE = 256


@contextlib.contextmanager
def task_cache() -> Iterator[None]:
    """Inside the block, :func:`make_task` returns the same :class:`Task` object for
    configurations with the same task settings (shapes, spectrum, alignment, decay, basis,
    noise and task seed) instead of drawing it again.

    A sweep over lr, α or the student's settings shares one task per task seed, and making
    it (two Haar QRs, the basis) is most of the Python cost of a small run. The task is the
    same bits either way: :func:`make_task` is a function of these settings alone. Blocks
    nest; the cache is emptied when the outermost one ends. A forked process keeps the
    cache it inherited.
    """
    global _CACHE, _CACHE_DEPTH
    with _CACHE_LOCK:
        if _CACHE_DEPTH == 0:
            _CACHE = {}
        _CACHE_DEPTH += 1
    try:
        yield
    finally:
        with _CACHE_LOCK:
            _CACHE_DEPTH -= 1
            if _CACHE_DEPTH == 0:
                _CACHE = None


def _task_settings(config: SimConfig) -> tuple:
    """Everything :func:`make_task` reads from ``config``."""
    return (config.d, config.m, config.task_rank, float(config.spectrum), config.align,
            float(config.decay), config.basis, float(config.noise),
            int(config.effective_task_seed))


def make_task(config: SimConfig) -> Task:
    """Build the task of THEORY §1 from ``config`` (seeded by ``config.effective_task_seed``).

    - Spectrum ``λ_i ∝ i^(−β)``, i = 1..d, normalised to mean 1.
    - ``σ⋆_j ∝ j^(−δ)``, j = 1..k, scaled so that the initial excess loss
      ``½‖Δ⋆Σ^½‖² = ½``.
    - ``U`` Haar on the Stiefel manifold; ``V`` Haar (``align="random"``) or the top-k
      eigen-directions of Σ (``align="aligned"``: the first k eigen-coordinates), drawn
      relative to Σ's eigenvectors and then expressed in the feature basis.
    - The feature basis (``basis``): the eigenbasis, or the seeded random rotation of
      :meth:`~signaldrift._basis.Basis.random` (its own stream, so U, V, σ⋆ and λ do not
      depend on the basis).

    Args:
        config: the simulation settings.

    Returns:
        The :class:`Task` (inside :func:`task_cache`, possibly one made before for the
        same task settings).
    """
    cache = _CACHE
    if cache is None:
        return _make_task(config)
    key = _task_settings(config)
    task = cache.get(key)
    if task is None:
        task = _make_task(config)
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)), None)
        cache[key] = task
    return task


def _make_task(config: SimConfig) -> Task:
    d, m, k = config.d, config.m, config.task_rank
    rng = rng_for(config.effective_task_seed, "task")
    i = np.arange(1, d + 1, dtype=np.float64)
    lam = i ** (-float(config.spectrum))
    lam = lam / lam.mean()
    U = _haar_orthonormal(rng, m, k)
    if config.align == "aligned":
        V = np.eye(d, k)
    else:
        V = _haar_orthonormal(rng, d, k)
    j = np.arange(1, k + 1, dtype=np.float64)
    sig = j ** (-float(config.decay))
    # ½‖Δ⋆Σ^½‖² = ½ Σ_j σ_j² (VᵀΣV)_jj because UᵀU = I.
    vsv_diag = np.einsum("ij,i,ij->j", V, lam, V)
    sig = sig / np.sqrt(np.sum(sig**2 * vsv_diag))
    if config.basis == "random":
        basis = Basis.random(d, config.effective_task_seed)
    else:
        basis = Basis.eigen(d)
    return Task(lam=lam, U=np.ascontiguousarray(U), sigma_star=sig,
                V=np.ascontiguousarray(V), noise=float(config.noise), basis=basis)
