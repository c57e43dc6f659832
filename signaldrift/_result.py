"""The result of one simulation and its ``.npz`` archive (schema in README)."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._config import SimConfig
from ._rng import SAMPLE_STREAM_VERSION
from ._task import Task

__all__ = ["SimulationResult", "ARCHIVE_VERSION"]

#: Version of the archive schema; bumped when keys change meaning.
#: 2: feature basis (``basis_*``), ``B0``, ``task_source``, snapshots, training set,
#: loss-change split records, ``noise_floor``, ``sample_stream_version`` (the minibatch
#: streams of :mod:`signaldrift._rng`); ``V`` is in Σ's eigen-coordinates.
ARCHIVE_VERSION = 2

# A fixed timestamp for every archive member, so the same arrays give the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_DOSDATE = (_ZIP_DATE[0] - 1980) << 9 | _ZIP_DATE[1] << 5 | _ZIP_DATE[2]
_DOSTIME = _ZIP_DATE[3] << 11 | _ZIP_DATE[4] << 5 | _ZIP_DATE[5] // 2
# zipfile's defaults for a stored member written by Python on a POSIX system: version 2.0
# to extract and made by, "made on" Unix (3), file mode 0o644.
_ZIP_VERSION, _ZIP_SYSTEM, _ZIP_ATTR = 20, 3, 0o644 << 16
_LOCAL = struct.Struct("<4s2B4HL2L2H")        # zipfile.structFileHeader
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")    # zipfile.structCentralDir
_END = struct.Struct("<4s4H2LH")              # zipfile.structEndArchive
_npy_headers: dict[tuple, bytes] = {}


def _npy_bytes(value) -> tuple[bytes, bytes]:
    """The ``.npy`` header and data of ``value`` as ``np.save`` writes them (format 1.0,
    the header cached per dtype, order and shape)."""
    a = np.asarray(value)
    if a.dtype.hasobject:
        raise ValueError("archives hold no object arrays")
    fortran = bool(a.flags.f_contiguous and not a.flags.c_contiguous)
    key = (str(a.dtype.descr), fortran, a.shape)
    header = _npy_headers.get(key)
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, np.lib.format.header_data_from_array_1_0(a))
        header = _npy_headers.setdefault(key, buf.getvalue())
    return header, a.tobytes(order="F" if fortran else "C")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` of ``arrays`` (members ``<key>.npy`` in sorted key order,
    fixed timestamps): byte for byte what ``zipfile.ZipFile(…, ZIP_STORED)`` writes with
    ``np.lib.format.write_array`` members (a test compares the two), assembled in memory
    with ``struct`` (about 10× faster: a sweep writes one archive per run). Archives up to
    2 GiB (no ZIP64)."""
    parts: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for key in sorted(arrays):
        name = f"{key}.npy".encode("ascii")
        header, data = _npy_bytes(arrays[key])
        size = len(header) + len(data)
        crc = zlib.crc32(data, zlib.crc32(header))
        parts += [_LOCAL.pack(b"PK\x03\x04", _ZIP_VERSION, 0, 0, 0, _DOSTIME, _DOSDATE, crc,
                              size, size, len(name), 0), name, header, data]
        central += [_CENTRAL.pack(b"PK\x01\x02", _ZIP_VERSION, _ZIP_SYSTEM, _ZIP_VERSION, 0, 0,
                                  0, _DOSTIME, _DOSDATE, crc, size, size, len(name), 0, 0, 0,
                                  0, _ZIP_ATTR, offset), name]
        offset += _LOCAL.size + len(name) + size
    if offset + sum(map(len, central)) >= 0x7FFFFFFF:
        raise ValueError("archive above 2 GiB: not supported")
    cd = b"".join(central)
    n = len(arrays)
    return b"".join(parts) + cd + _END.pack(b"PK\x05\x06", 0, 0, n, n, len(cd), offset, 0)


#: .npy headers seen by :func:`read_npz` → (dtype, Fortran order, shape); an archive's
#: headers repeat across runs, so each is parsed once per process.
_npy_layouts: dict[bytes, tuple] = {}


class _NotStored(ValueError):
    """An archive that :func:`read_npz` leaves to ``np.load``."""


def _npy_member(data: bytearray, start: int, size: int) -> np.ndarray:
    """The array of the ``.npy`` member at ``data[start:start + size]`` (format 1.0–3.0),
    a writable view of ``data``."""
    if data[start:start + 6] != b"\x93NUMPY":
        raise _NotStored("not a .npy member")
    major = data[start + 6]
    if major == 1:
        hlen, hoff = struct.unpack_from("<H", data, start + 8)[0], start + 10
    elif major in (2, 3):
        hlen, hoff = struct.unpack_from("<I", data, start + 8)[0], start + 12
    else:
        raise _NotStored(f".npy format {major}")
    header = bytes(data[hoff:hoff + hlen])
    layout = _npy_layouts.get(header)
    if layout is None:
        d = ast.literal_eval(header.decode("utf8" if major == 3 else "latin1"))
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        if dtype.hasobject:
            raise _NotStored("object array")
        layout = _npy_layouts.setdefault(header, (dtype, bool(d["fortran_order"]),
                                                  tuple(d["shape"])))
    dtype, fortran, shape = layout
    count = math.prod(shape)
    off = hoff + hlen
    if count * dtype.itemsize != start + size - off:
        raise _NotStored("member size does not match its header")
    if count == 0:
        return np.empty(shape, dtype, order="F" if fortran else "C")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=off)
    return flat.reshape(shape, order="F" if fortran else "C")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every member of an ``.npz`` archive, as ``np.load(path)[key]`` returns them.

    Archives of stored (uncompressed) ``.npy`` members, as :func:`npz_bytes` writes them,
    are parsed from the file's bytes in one read (the ZIP central directory, then each
    member's header, parsed once per distinct header): about 10× faster than ``np.load``,
    which reads a sweep's cached runs one member at a time through ``zipfile``. The arrays
    are writable views of one buffer per archive. Anything else (compressed members,
    ZIP64, a comment, another kind of member) is read by ``np.load``.
    """
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    try:
        if len(data) < _END.size:
            raise _NotStored("too short")
        sig, _, _, _, n, cd_size, cd_off, comment = _END.unpack_from(data, len(data) - _END.size)
        if sig != b"PK\x05\x06" or comment or cd_off + cd_size != len(data) - _END.size:
            raise _NotStored("not a plain archive")
        out: dict[str, np.ndarray] = {}
        pos = cd_off
        for _ in range(n):
            f = _CENTRAL.unpack_from(data, pos)
            if f[0] != b"PK\x01\x02" or f[6] != 0 or f[10] != f[11]:
                raise _NotStored("not a stored member")
            name_len, extra_len, comment_len, local = f[12], f[13], f[14], f[18]
            name = bytes(data[pos + _CENTRAL.size:pos + _CENTRAL.size + name_len]).decode()
            pos += _CENTRAL.size + name_len + extra_len + comment_len
            g = _LOCAL.unpack_from(data, local)
            if g[0] != b"PK\x03\x04":
                raise _NotStored("no local header")
            start = local + _LOCAL.size + g[10] + g[11]
            key = name[:-4] if name.endswith(".npy") else name
            out[key] = _npy_member(data, start, f[10])
        return out
    except (_NotStored, struct.error, UnicodeDecodeError, ValueError, KeyError,
            SyntaxError):
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` whose bytes depend only on ``arrays``
    (:func:`npz_bytes`), atomically (temporary file in the same folder, then rename)."""
    data = npz_bytes(arrays)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@dataclass
class SimulationResult:
    """One run: its configuration, task, trajectory records and final state.

    Every matrix over the input space (A₀, A, the snapshots of A, ``X_train``, Δ) is in
    the feature basis (THEORY §1); the task's factors are stored as the :class:`Task`
    holds them (V in Σ's eigen-coordinates, with the basis beside it).

    Attributes:
        config: every setting of the run.
        task: the regression task (THEORY §1); ``None`` when the engine never formed it
            (the reduced engine at widths where its factors cannot be stored).
        scale: the scaling factor s used (THEORY §2).
        A0, B0: initial factors (r, d) and (m, r) (``None`` if never formed).
        A, B: final factors (at the diverged step if the run diverged); for full
            fine-tuning A is (0, d), B is (m, 0) and ``Delta`` holds the final Δ.
        step: steps t at which the per-step terms were recorded.
        loss_step: steps t at which the excess loss was recorded (the last is ``steps``).
        records: ``loss`` over ``loss_step``; every name of ``RECORD_NAMES`` over ``step``.
            Entries at and after divergence are NaN.
        diverged: whether the run diverged; diverged_step: the step t at which the loss
            was first non-finite or above ``divergence_bound`` (−1 if never);
            diverged_loss: that loss (NaN if never).
        sharpness: ``step``, ``lambda_max`` (λ_max of the Hessian, THEORY §4) and
            ``precond_lambda_max`` (λ_max(P⁻¹H), Adam/AdamW only, else NaN) at
            ``config.sharpness_steps``.
        Delta: final Δ of full fine-tuning, else ``None``.
        task_source: ``"generated"`` (from the config's seeds) or ``"user"`` (arrays given
            to ``simulate``; the archive stores them so the run can be replayed).
        snapshots: ``step`` (n,), ``A`` (n, r, d), ``B`` (n, m, r) at
            ``config.snapshot_steps`` (empty arrays if none).
        train: the fixed training set (``train_size`` > 0): ``X_train`` (N, d) in the
            feature basis and ``noise_train`` (N, m); else empty.
        noise_floor: ½·m·σ², the part of the full population loss no student can remove
            (the full test loss is ``loss + noise_floor``).
        extras: engine-specific arrays, stored in the archive as ``extra_<name>``.
    """

    config: SimConfig
    task: Task | None
    scale: float
    A0: np.ndarray | None
    A: np.ndarray | None
    B: np.ndarray | None
    step: np.ndarray
    loss_step: np.ndarray
    records: dict[str, np.ndarray]
    diverged: bool = False
    diverged_step: int = -1
    diverged_loss: float = float("nan")
    sharpness: dict[str, np.ndarray] = field(default_factory=dict)
    Delta: np.ndarray | None = None
    B0: np.ndarray | None = None
    task_source: str = "generated"
    snapshots: dict[str, np.ndarray] = field(default_factory=dict)
    train: dict[str, np.ndarray] = field(default_factory=dict)
    noise_floor: float = 0.0
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    # ----------------------------------------------------------------- summaries
    @property
    def loss(self) -> np.ndarray:
        """Excess loss at ``loss_step``."""
        return self.records["loss"]

    @property
    def final_loss(self) -> float:
        """Excess loss after the last step (``inf`` if the run diverged)."""
        return float("inf") if self.diverged else float(self.records["loss"][-1])

    def summary(self) -> dict:
        """Final loss, mean drift ratio, divergence, and the main settings."""
        ratio = self.records["drift_ratio"]
        finite = ratio[np.isfinite(ratio)]
        c = self.config
        return {
            "model": c.model,
            "rule": c.rule,
            "rank": c.rank,
            "alpha": c.alpha,
            "scale": self.scale,
            "optimizer": c.optimizer,
            "lr": c.lr,
            "steps": c.steps,
            "initial_loss": float(self.records["loss"][0]),
            "final_loss": self.final_loss,
            "mean_drift_ratio": float(finite.mean()) if finite.size else float("nan"),
            "diverged": self.diverged,
            "diverged_step": self.diverged_step,
        }

    # ----------------------------------------------------------------- archive
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every archive key (README "Archive schema") as an array."""
        out: dict[str, np.ndarray] = {
            "version": np.array(ARCHIVE_VERSION),
            "config": np.array(self.config.to_json()),
            "task_source": np.array(self.task_source),
            "arrays_stored": np.array(self.task is not None),
            "scale": np.array(self.scale),
            "step": self.step,
            "loss_step": self.loss_step,
            "diverged": np.array(self.diverged),
            "diverged_step": np.array(self.diverged_step),
            "diverged_loss": np.array(self.diverged_loss),
            "noise_floor": np.array(self.noise_floor),
            "sample_stream_version": np.array(SAMPLE_STREAM_VERSION),
        }
        if self.task is not None:
            out.update(self.task.to_arrays())
        for key in ("A0", "B0", "A", "B", "Delta"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.records)
        for key, value in self.sharpness.items():
            out[f"sharpness_{key}"] = value
        for key, value in self.snapshots.items():
            out[f"snapshot_{key}"] = value
        out.update(self.train)
        for key, value in self.extras.items():
            out[f"extra_{key}"] = value
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` archive; the same result always gives the same bytes."""
        path = Path(path)
        _write_npz(path, self.to_arrays())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SimulationResult":
        """Read an archive written by :meth:`save`."""
        from ._kernels import RECORD_NAMES

        a = read_npz(path)
        version = int(a["version"])
        if version != ARCHIVE_VERSION:
            raise ValueError(f"{path}: archive version {version}, this signaldrift reads "
                             f"version {ARCHIVE_VERSION}; rerun the simulation")
        config = SimConfig.from_dict(json.loads(str(a["config"])))
        task_source = str(a["task_source"])
        task = None
        if bool(a["arrays_stored"]):
            task = Task.from_archive(a, config)
        records = {name: a[name] for name in ("loss", "train_loss", *RECORD_NAMES)
                   if name in a}

        def prefixed(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: v for k, v in a.items() if k.startswith(prefix)}

        train = {k: a[k] for k in ("X_train", "noise_train") if k in a}
        return cls(config=config, task=task, scale=float(a["scale"]), A0=a.get("A0"),
                   A=a.get("A"), B=a.get("B"), step=a["step"], loss_step=a["loss_step"],
                   records=records, diverged=bool(a["diverged"]),
                   diverged_step=int(a["diverged_step"]),
                   diverged_loss=float(a["diverged_loss"]), sharpness=prefixed("sharpness_"),
                   Delta=a.get("Delta"), B0=a.get("B0"), task_source=task_source,
                   snapshots=prefixed("snapshot_"), train=train,
                   noise_floor=float(a["noise_floor"]), extras=prefixed("extra_"))
