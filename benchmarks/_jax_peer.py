"""The JAX peer of the benchmarks: signaldrift's LoRA dynamics written the way a JAX user
would write them (factorised, float64, ``jax.jit`` + ``lax.scan`` over steps, ``vmap`` over
configurations), plus a plain dense NumPy Adam loop.

Not part of the package (JAX is a benchmark-only dependency: ``pip install jax``, or
``pip install -e '.[bench]'``). Used by ``bench_sweep_vs_jax.py`` and
``bench_single_vs_jax.py``; run it directly (``python benchmarks/_jax_peer.py``) for the
standalone whole-process timing.

The model (THEORY.md §1–§3) in Σ's eigen-coordinates (Σ = diag λ), exactly as the
kernels of ``signaldrift._kernels`` hold it: A (r×d), B (m×r), Δ⋆ = U·diag(σ⋆)·Vᵀ,
E = sBA − Δ⋆ never formed.

- Population gradient: ``∇_B = s²·B(AΣAᵀ) − s·U·diag σ⋆·(VᵀΣAᵀ)``,
  ``∇_A = s²·(BᵀB)(AΣ) − s·(UᵀB)ᵀ·diag σ⋆·(VᵀΣ)``: O((m + d)·r·(r + k)) a step.
- Minibatch gradient from samples X (n×d, eigen-coordinates), N (n×m):
  ``R = s·(XAᵀ)Bᵀ − (XV)·diag σ⋆·Uᵀ − N``, ``∇_B = (s/n)·Rᵀ(XAᵀ)``,
  ``∇_A = (s/n)·(BᵀRᵀ)X``. The samples are either given (``SampleStream(config,
  lam).draw(T)``) or drawn in the graph from the very counter-based streams the Numba
  kernels use (SplitMix64 + Box–Muller in uint64 JAX arithmetic), so both give the same
  curves as ``signaldrift.simulate``.
- Adam with torch.optim's semantics (bias corrections, ε after the square root), moments
  in the feature coordinates: for ``basis="eigen"`` these are the eigen-coordinates; for
  ``basis="random"`` the peer rotates A's gradient and step with the dense d×d Q
  (``O(r·d²)``, where signaldrift applies its structured rotation in ``O(r·d·log d)``).
- Per-step divergence check value: the trace form of the loss (as the kernels do).
- Records (``record="every"`` at every step, ``record="t0"`` at t = 0 only): the 17
  records of ``signaldrift.RECORD_NAMES`` with the kernels' formulas (the norms from R
  factors of thin QRs, cancellation-free; the signed terms as Gram traces; the subspace
  overlap from an SVD), and the loss from the QR form at the recorded steps and the end.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np

JAX_MISSING = ("jax is not installed: this benchmark compares signaldrift with JAX; "
               "install it with `pip install jax` (or `pip install -e '.[bench]'`). "
               "Skipping.")


def require_jax():
    """Import jax (float64 on) or print one line and exit 0."""
    try:
        import jax  # noqa: F401
    except ImportError:
        print(JAX_MISSING)
        sys.exit(0)
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


RECORD_NAMES = ("grad_norm", "signal_norm", "drift_norm", "drift_ratio", "progress",
                "descent", "curvature", "update_norm", "adapter_norm", "A_norm", "B_norm",
                "subspace_overlap", "descent_signal", "descent_drift", "curvature_signal",
                "curvature_cross", "curvature_drift")


# --------------------------------------------------------------------------- inputs
def problem(config, with_Q: bool = False) -> dict[str, np.ndarray]:
    """One configuration's inputs (NumPy), built with signaldrift's own seeded task and
    initialisation so that both sides solve the same problem."""
    from signaldrift._init import init_adapter
    from signaldrift._rng import stream_key
    from signaldrift._scaling import scale_factor
    from signaldrift._schedules import learning_rates
    from signaldrift._task import make_task

    assert config.model == "lora" and config.optimizer == "adam" and config.train_size == 0
    assert config.weight_decay == 0.0 and config.loraplus_lr_ratio == 1.0
    task = make_task(config)
    A0, B0 = init_adapter(config, task)
    p = {
        "lam": task.lam, "U": task.U, "V": task.V, "sig": task.sigma_star,
        "A0": task.basis.to_eigen(A0), "B0": B0,
        "s": np.float64(scale_factor(config)), "lrs": learning_rates(config),
        "beta1": np.float64(config.beta1), "beta2": np.float64(config.beta2),
        "eps": np.float64(config.eps), "eps_b": np.float64(config.effective_eps_b),
        "noise": np.float64(config.noise),
        "key_x": np.uint64(stream_key(config.seed, "inputs")),
        "key_e": np.uint64(stream_key(config.seed, "noise")),
    }
    if with_Q:
        p["Q"] = task.basis.matrix()
    return p


def stack(problems: list[dict]) -> dict[str, np.ndarray]:
    """Per-configuration inputs with a leading configuration axis."""
    return {k: np.stack([p[k] for p in problems]) for k in problems[0]}


# --------------------------------------------------------------------------- JAX model
def build(steps: int, batch: int, record: str, basis: str = "eigen", samples: str = "stream",
          noisy: bool = False):
    """The run function ``run(p[, X, N]) -> dict`` of one configuration (jit/vmap it).

    Args:
        steps: T. batch: minibatch size n (0: population gradient).
        record: ``"every"`` (records and QR loss at every step) or ``"t0"`` (records at
            t = 0 only; loss at t = 0 and at the end).
        basis: ``"eigen"`` (moments in eigen-coordinates) or ``"random"`` (dense Q: the
            problem needs ``Q``).
        samples: ``"stream"`` (drawn in the graph from the kernels' counter-based streams)
            or ``"given"`` (``run(p, X, N)`` with X (T, n, d), N (T, n, m)).
        noisy: the label noise is > 0 (draw it), else N = 0.

    Returns ``loss`` ((T+1,) or (2,)), ``rec`` ((17, T) or (17, 1)), ``trace_loss`` (T,),
    the per-step divergence-check value, and the final ``A`` (eigen-coordinates), ``B``.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    assert record in ("every", "t0") and basis in ("eigen", "random")
    n = int(batch)

    # ---- the kernels' sample streams (signaldrift._rng), in uint64 arithmetic
    PHI = jnp.uint64(0x9E3779B97F4A7C15)
    M1, M2 = jnp.uint64(0xBF58476D1CE4E5B9), jnp.uint64(0x94D049BB133111EB)

    def mix(key, counter):
        z = key + counter * PHI
        z = (z ^ (z >> jnp.uint64(30))) * M1
        z = (z ^ (z >> jnp.uint64(27))) * M2
        return z ^ (z >> jnp.uint64(31))

    def uniform(key, counter):
        return ((mix(key, counter) >> jnp.uint64(11)).astype(jnp.float64) + 1.0) \
            * (1.0 / 9007199254740992.0)

    def normals(key, start, rows, cols):
        """Positions start … start + rows·cols − 1 of the stream (start even)."""
        half = rows * cols // 2
        c = start.astype(jnp.uint64) + jnp.uint64(2) * jnp.arange(half, dtype=jnp.uint64)
        u1, u2 = uniform(key, c), uniform(key, c + jnp.uint64(1))
        rad = jnp.sqrt(-2.0 * jnp.log(u1))
        ang = (2.0 * np.pi) * u2
        return jnp.stack([rad * jnp.cos(ang), rad * jnp.sin(ang)], axis=-1).reshape(rows, cols)

    def draw(p, t):
        d, m = p["lam"].shape[0], p["U"].shape[0]
        X = normals(p["key_x"], t * (n * d), n, d) * jnp.sqrt(p["lam"])[None, :]
        if noisy:
            N = normals(p["key_e"], t * (n * m), n, m) * p["noise"]
        else:
            N = jnp.zeros((n, m))
        return X, N

    # ---- gradients and the divergence-check loss (trace form)
    def grads(p, A, B, X, N):
        s, lam, U, V, sig = p["s"], p["lam"], p["U"], p["V"], p["sig"]
        VtS = V.T * lam[None, :]
        AS = A * lam
        ASAt = AS @ A.T
        VSAt = VtS @ A.T
        BtB = B.T @ B
        UtB = U.T @ B
        L = (0.5 * s * s * jnp.sum(ASAt * BtB) - s * jnp.sum(sig[:, None] * UtB * VSAt)
             + 0.5 * p["c_loss"])
        if n == 0:
            gB = s * s * (B @ ASAt) - s * (U @ (sig[:, None] * VSAt))
            gA = s * s * (BtB @ AS) - s * ((UtB.T * sig[None, :]) @ VtS)
        else:
            XA = X @ A.T
            R = -N + s * (XA @ B.T) - ((X @ V) * sig[None, :]) @ U.T
            gB = (s / n) * (R.T @ XA)
            gA = (s / n) * ((B.T @ R.T) @ X)
        return gA, gB, L

    def adam(param, g, mom, sq, t, lr, beta1, beta2, eps, Q=None):
        if Q is not None:
            g = g @ Q.T  # to the feature coordinates
        mom = mom + (1.0 - beta1) * (g - mom)
        sq = beta2 * sq + (1.0 - beta2) * g * g
        tt = (t + 1).astype(jnp.float64)
        bc1 = 1.0 - beta1 ** tt
        bc2 = 1.0 - beta2 ** tt
        upd = (lr / bc1) * (mom / (jnp.sqrt(sq) / jnp.sqrt(bc2) + eps))
        if Q is not None:
            upd = upd @ Q  # back to the eigen-coordinates
        return param - upd, mom, sq

    def step(p, state, t, X, N):
        A, B, mA, vA, mB, vB = state
        gA, gB, L = grads(p, A, B, X, N)
        lr = p["lrs"][t]
        A1, mA, vA = adam(A, gA, mA, vA, t, lr, p["beta1"], p["beta2"], p["eps"],
                          p.get("Q") if basis == "random" else None)
        B1, mB, vB = adam(B, gB, mB, vB, t, lr, p["beta1"], p["beta2"], p["eps_b"])
        return (A1, B1, mA, vA, mB, vB), L

    # ---- records (the kernels' formulas)
    def qr_r(X):
        return jnp.linalg.qr(X, mode="r")

    def fro(X):
        return jnp.sqrt(jnp.sum(X * X))

    def cat(X, Y):
        return jnp.concatenate([X, Y], axis=1)

    def loss_gn(p, A, B):
        s, lam, U, V, sig = p["s"], p["lam"], p["U"], p["V"], p["sig"]
        RF = qr_r(cat(s * B, -(U * sig[None, :])))
        H = cat(A.T, V)
        Rh = qr_r(H * jnp.sqrt(lam)[:, None])
        Rg = qr_r(H * lam[:, None])
        return 0.5 * fro(RF @ Rh.T) ** 2, fro(RF @ Rg.T)

    def records(p, A, B, A1, B1):
        s, lam, U, V = p["s"], p["lam"], p["U"], p["V"]
        Sg = jnp.diag(p["sig"])
        r, k = A.shape[0], V.shape[1]
        VtS = V.T * lam[None, :]
        AS = A * lam
        ASAt = AS @ A.T
        VSAt = VtS @ A.T
        BtB = B.T @ B
        UtB = U.T @ B
        L, gn = loss_gn(p, A, B)
        dA, dB = A1 - A, B1 - B
        R2 = qr_r(cat(dB, B))
        Aside = cat(A.T, dA.T)
        R3 = qr_r(Aside)
        R4 = qr_r(Aside * jnp.sqrt(lam)[:, None])
        R2a, R2b = R2[:, :r], R2[:, r:]
        R3a, R3b = R3[:, :r], R3[:, r:]
        R4a, R4b = R4[:, :r], R4[:, r:]
        sn = s * fro(R2a @ R3a.T + R2b @ R3b.T)
        dn = s * fro(R2a @ R3b.T)
        un = s * fro(R2a @ (R3a + R3b).T + R2b @ R3b.T)
        kap_s = 0.5 * (s * fro(R2a @ R4a.T + R2b @ R4b.T)) ** 2
        kap_d = 0.5 * (s * fro(R2a @ R4b.T)) ** 2
        kap = 0.5 * (s * fro(R2a @ (R4a + R4b).T + R2b @ R4b.T)) ** 2
        dBtB = dB.T @ B
        dBtU = dB.T @ U
        ASdAt = AS @ dA.T
        dASdAt = (dA * lam) @ dA.T
        VSdAt = VtS @ dA.T
        dBtdB = dB.T @ dB
        tr = jnp.trace
        des_s = (s**2 * tr(ASAt @ dBtB) + s**2 * tr(ASdAt @ BtB)
                 - s * tr(Sg @ UtB @ VSdAt.T) - s * tr(Sg @ VSAt @ dBtU))
        des_d = s**2 * tr(ASdAt @ dBtB) - s * tr(Sg @ VSdAt @ dBtU)
        des = (s**2 * tr(ASAt @ dBtB) + s**2 * tr(ASdAt @ BtB) + s**2 * tr(ASdAt @ dBtB)
               - s * tr(Sg @ UtB @ VSdAt.T) - s * tr(Sg @ VSAt @ dBtU)
               - s * tr(Sg @ VSdAt @ dBtU))
        kap_x = s**2 * tr(ASdAt @ dBtdB) + s**2 * tr(dASdAt @ dBtB)
        Ua, sv, _ = jnp.linalg.svd(A.T, full_matrices=False)
        top = jnp.max(sv)
        keep = (sv > 1e-12 * top) & (top > 0.0)
        cosines = Ua.T @ V
        overlap = jnp.sum(jnp.where(keep[:, None], cosines * cosines, 0.0)) / min(r, k)
        safe = jnp.where(sn > 0.0, sn, 1.0)
        ratio = jnp.where(sn > 0.0, dn / safe, jnp.where(dn == 0.0, 0.0, jnp.inf))
        progress = jnp.where(gn > 0.0, -des / jnp.where(gn > 0.0, gn, 1.0), 0.0)
        rec = jnp.stack([gn, sn, dn, ratio, progress, des, kap, un,
                         s * fro(R2b @ R3a.T), fro(A), fro(B), overlap,
                         des_s, des_d, kap_s, kap_x, kap_d])
        return L, rec

    def prepare(p):
        p = dict(p)
        lam, V, sig, U = p["lam"], p["V"], p["sig"], p["U"]
        Sg = jnp.diag(sig)
        vsv = (V * lam[:, None]).T @ V
        p["c_loss"] = jnp.trace(Sg @ vsv @ Sg @ (U.T @ U))
        return p

    def run(p, Xs=None, Ns=None):
        p = prepare(p)
        A, B = p["A0"], p["B0"]
        state = (A, B, jnp.zeros_like(A), jnp.zeros_like(A), jnp.zeros_like(B),
                 jnp.zeros_like(B))
        ts = jnp.arange(steps)

        def sample(t, xs):
            if n == 0:
                return None, None
            if samples == "given":
                return xs
            return draw(p, t)

        def body_every(state, inp):
            t, xs = inp
            X, N = sample(t, xs)
            new, Ltr = step(p, state, t, X, N)
            L, rec = records(p, state[0], state[1], new[0], new[1])
            return new, (Ltr, L, rec)

        def body_plain(state, inp):
            t, xs = inp
            X, N = sample(t, xs)
            new, Ltr = step(p, state, t, X, N)
            return new, Ltr

        xs = (Xs, Ns) if samples == "given" and n > 0 else None
        if record == "every":
            state, (Ltr, L, rec) = lax.scan(body_every, state, (ts, xs))
            Lf, _ = loss_gn(p, state[0], state[1])
            return {"loss": jnp.append(L, Lf), "rec": rec.T, "trace_loss": Ltr,
                    "A": state[0], "B": state[1]}
        first = None if xs is None else (xs[0][0], xs[1][0])
        state0 = state
        state, L0tr = body_plain(state, (ts[0], first))
        L0, rec0 = records(p, state0[0], state0[1], state[0], state[1])
        rest = None if xs is None else (xs[0][1:], xs[1][1:])
        state, Ltr = lax.scan(body_plain, state, (ts[1:], rest))
        Lf, _ = loss_gn(p, state[0], state[1])
        return {"loss": jnp.stack([L0, Lf]), "rec": rec0[:, None],
                "trace_loss": jnp.concatenate([L0tr[None], Ltr]),
                "A": state[0], "B": state[1]}

    return run


def to_device(p: dict):
    import jax.numpy as jnp

    return {k: jnp.asarray(v) for k, v in p.items()}


def compiled_sweep(configs, record: str, basis: str = "eigen"):
    """(``fn``, device inputs) of ``jit(vmap(run))`` over ``configs`` (one block_key),
    samples drawn in the graph; compiled (not yet run)."""
    c0 = configs[0]
    p = stack([problem(c, with_Q=basis == "random") for c in configs])
    return compile_stacked(p, c0.steps, c0.batch, record, basis, c0.noise > 0)


def compile_stacked(p, steps, batch, record, basis="eigen", noisy=False):
    """(``fn``, device inputs) of ``jit(vmap(run))`` for stacked inputs ``p``."""
    import jax

    run = build(steps, batch, record, basis=basis, samples="stream", noisy=noisy)
    p = to_device(p)
    fn = jax.jit(jax.vmap(run)).lower(p).compile()
    return fn, p


def block(out):
    import jax

    return jax.tree_util.tree_map(lambda x: x.block_until_ready(), out)


# --------------------------------------------------------------------------- dense NumPy
def dense_numpy_run(config, steps: int | None = None):
    """A plain dense NumPy Adam loop for population LoRA in the eigenbasis (what a NumPy
    user would write: W = sBA and G = (W − Δ⋆)Σ formed, m×d): the loss at t = 0 and at the
    end. Torch's Adam (the kernels' formula)."""
    assert config.basis == "eigen" and config.batch == 0
    p = problem(config)
    T = config.steps if steps is None else steps
    s, lam, lrs = float(p["s"]), p["lam"], p["lrs"]
    Dstar = (p["U"] * p["sig"][None, :]) @ p["V"].T
    A, B = p["A0"].copy(), p["B0"].copy()
    mA, vA, mB, vB = (np.zeros_like(A), np.zeros_like(A), np.zeros_like(B),
                      np.zeros_like(B))
    b1, b2, eps = float(p["beta1"]), float(p["beta2"]), float(p["eps"])

    def loss(A, B):
        E = s * (B @ A) - Dstar
        return 0.5 * float(np.sum(E * E * lam))

    L0 = loss(A, B)
    for t in range(T):
        G = (s * (B @ A) - Dstar) * lam
        gB = s * (G @ A.T)
        gA = s * (B.T @ G)
        bc1, bc2 = 1.0 - b1 ** (t + 1), 1.0 - b2 ** (t + 1)
        for P, g, mo, sq in ((A, gA, mA, vA), (B, gB, mB, vB)):
            mo += (1.0 - b1) * (g - mo)
            sq *= b2
            sq += (1.0 - b2) * g * g
            P -= (lrs[t] / bc1) * (mo / (np.sqrt(sq) / np.sqrt(bc2) + eps))
    return np.array([L0, loss(A, B)])


# --------------------------------------------------------------------------- comparison
def rel_dev(a, b) -> float:
    """max |a − b| / max |b| over the finite entries (NaN where both are NaN is equal)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    if np.any(np.isnan(a) != np.isnan(b)):
        return float("inf")
    a, b = a[~both_nan], b[~both_nan]
    if a.size == 0:
        return 0.0
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a - b)))


def check_against_signaldrift(config, record: str, samples: str = "stream",
                              basis: str = "eigen", tol: float = 1e-12) -> dict:
    """Run one configuration in signaldrift and in the JAX peer; the relative deviations
    of the loss curve, of each record and of the final factors. Raises AssertionError when
    the loss curve deviates by more than ``tol`` (relative to its largest value)."""
    import jax

    import signaldrift as sd

    res = sd.simulate(config)
    run = build(config.steps, config.batch, record, basis=basis, samples=samples,
                noisy=config.noise > 0)
    p = problem(config, with_Q=basis == "random")
    if samples == "given" and config.batch > 0:
        from signaldrift import SampleStream

        X, N = SampleStream(config, p["lam"]).draw(config.steps)
        out = jax.jit(run)(to_device(p), X, N)
    else:
        out = jax.jit(run)(to_device(p))
    out = {k: np.asarray(v) for k, v in out.items()}
    loss_sd = res.records["loss"]
    dev = {"loss": rel_dev(out["loss"], loss_sd)}
    rec_sd = np.stack([res.records[name] for name in RECORD_NAMES])
    # per record, relative to that record's largest magnitude
    dev["records"] = max(rel_dev(out["rec"][q], rec_sd[q]) for q in range(len(RECORD_NAMES)))
    task = res.task
    dev["final_A"] = rel_dev(task.basis.to_features(out["A"]), res.A)
    dev["final_B"] = rel_dev(out["B"], res.B)
    assert dev["loss"] <= tol, (f"JAX peer's loss curve deviates from signaldrift's by "
                                f"{dev['loss']:.2e} (> {tol:g}) for {config}")
    return dev


# --------------------------------------------------------------------------- server
class PeerProcess:
    """The JAX peer in a separate (spawned) process, driven over a pipe.

    signaldrift's sweep engine forks worker processes, and forking a process in which JAX
    has run can deadlock (JAX is multithreaded; it says so itself); so the benchmark's own
    process never imports JAX and the JAX side runs here, one request at a time, while the
    other side idles. ``env`` is applied in the child before JAX is imported.

    Watchdog: jax 0.10.2 on CPU sometimes deadlocks inside an execution of the vmapped
    sweep (every thread in a futex wait, no CPU used; see ``SAFE_XLA_FLAGS``). A request that has not answered after ``timeout`` seconds
    kills the child, starts a new one, compiles again what had been compiled, and repeats
    the request (up to 3 times); ``restarts`` counts these. A hung run is never timed."""

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        self._env = dict(env or {})
        self.timeout = timeout
        self.restarts = 0
        self._compiled: dict[str, tuple] = {}
        self._start()

    def _start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self._env), daemon=True)
        self._proc.start()
        child.close()
        ok, info = self._conn.recv()
        self.available = ok
        self.info = info

    def _restart(self) -> None:
        self._proc.kill()
        self._proc.join()
        self.restarts += 1
        self._start()
        for name, args in self._compiled.items():
            self._request("compile", name, *args)

    def _request(self, op: str, *args):
        self._conn.send((op, args))
        if not self._conn.poll(self.timeout):
            raise TimeoutError(op)
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"JAX peer: {value}")
        return value

    def call(self, op: str, *args):
        for attempt in range(4):
            try:
                value = self._request(op, *args)
                break
            except TimeoutError:
                if attempt == 3:
                    raise RuntimeError(f"JAX peer: {op} hung 4 times") from None
                print(f"    (JAX peer hung in {op!r} for {self.timeout:.0f} s: restarted)",
                      flush=True)
                self._restart()
        if op == "compile":
            self._compiled[args[0]] = args[1:]
        elif op == "drop":
            self._compiled.pop(args[0], None)
        return value

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()


#: XLA flags the JAX peer runs with. jax 0.10.2's CPU runtime deadlocked here (every thread
#: in a futex wait, no CPU used) in most runs of the vmapped minibatch sweep with records,
#: and in some of the others, with its default flags; with Eigen's multi-threading and the
#: concurrency-optimised scheduler off the hang became rare (about 1 run in 15), and the
#: times did not change beyond the noise. The watchdog of PeerProcess handles the rest.
SAFE_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=false "
                  "--xla_cpu_enable_concurrency_optimized_scheduler=false")


def _serve(conn, env) -> None:
    os.environ.update(env)
    if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                                   SAFE_XLA_FLAGS).strip()
    try:
        import jax
    except ImportError:
        conn.send((False, JAX_MISSING))
        return
    jax.config.update("jax_enable_x64", True)
    conn.send((True, f"jax {jax.__version__}, {jax.devices()[0].platform}, "
                     f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"))
    import time
    import traceback

    compiled, cores = {}, []
    while True:
        msg = conn.recv()
        if msg is None:
            return
        op, args = msg
        try:
            if op == "compile":  # (name, grid kwargs, record, basis) -> compile seconds
                name, grid, record, basis = args
                t0 = time.perf_counter()
                compiled[name] = compiled_sweep(sweep_grid(**grid), record, basis)
                value = time.perf_counter() - t0
            elif op == "time":  # (name, repeats) -> seconds of each run
                name, repeats = args
                fn, p = compiled[name]
                value = []
                for _ in range(repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    block(fn(p))
                    value.append(time.perf_counter() - t0)
                    # cores busy on average (CPU time of all threads over wall time)
                    cores.append((time.process_time() - c0) / value[-1])
            elif op == "outputs":  # name -> NumPy outputs of one run
                fn, p = compiled[args[0]]
                value = {k: np.asarray(v) for k, v in block(fn(p)).items()}
            elif op == "cores":  # mean cores busy during the timed runs since last asked
                value = float(np.mean(cores)) if cores else float("nan")
                cores.clear()
            elif op == "drop":
                compiled.pop(args[0], None)
                value = None
            else:
                raise ValueError(f"unknown request {op!r}")
            conn.send((True, value))
        except Exception:  # noqa: BLE001 - reported to the driver
            conn.send((False, traceback.format_exc()))


# --------------------------------------------------------------------------- standalone
def _standalone(argv=None) -> None:
    """A fresh process that runs the JAX version of a sweep (for whole-process timing):
    load the inputs (``--inputs``: an .npz of :func:`stack`'s arrays, written by the
    driver, so that this process imports neither signaldrift nor Numba; without it they are
    built here with signaldrift's task and init), compile, run, fetch the results."""
    import argparse
    import time

    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description="JAX peer: one sweep, whole process")
    ap.add_argument("--inputs", default=None, help="stacked inputs (.npz)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--record-every", type=int, default=200)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default=None, help="write the final losses here (.npy)")
    args = ap.parse_args(argv)
    if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                                   SAFE_XLA_FLAGS).strip()
    require_jax()
    record = "every" if args.record_every == 1 else "t0"
    if args.inputs:
        with np.load(args.inputs) as z:
            p = {k: z[k] for k in z.files}
    else:
        p = stack([problem(c) for c in sweep_grid(args.d, args.batch, args.record_every,
                                                   args.steps, n_seed=args.seeds)])
    fn, p = compile_stacked(p, args.steps, args.batch, record)
    out = block(fn(p))
    final = np.asarray(out["loss"])[:, -1]
    if args.out:
        np.save(args.out, final)
    print(f"jax peer: {final.size} configurations in "
          f"{time.perf_counter() - t_start:.2f} s (after interpreter start)")


def sweep_grid(d=128, batch=0, record_every=200, steps=200, n_lr=8, n_alpha=4, n_seed=4,
               basis="eigen"):
    """The figures' grid: lr log-spaced 1e-4…1e-1 × α log-spaced 4…64 × seed, d = m,
    r = k = 8, λ ∝ 1/i, Adam."""
    from signaldrift import SimConfig

    lrs = np.geomspace(1e-4, 1e-1, n_lr)
    alphas = np.geomspace(4.0, 64.0, n_alpha)
    base = SimConfig(d=d, m=d, rank=8, task_rank=8, spectrum=1.0, optimizer="adam",
                     steps=steps, record_every=record_every, batch=batch, basis=basis)
    return [base.replace(lr=float(lr), alpha=float(a), seed=sd)
            for lr in lrs for a in alphas for sd in range(n_seed)]


if __name__ == "__main__":
    _standalone()
