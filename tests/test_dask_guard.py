"""The command line keeps xarray from importing Dask where no Dask object can exist
(signaldrift/_dask_guard.py): same netCDF bytes, Dask usable again afterwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("dask")  # with Dask absent there is nothing to hide

# Run in a fresh interpreter: this test process may have imported Dask already (then the
# guard, by design, changes nothing).
_GUARD = """
import sys
import numpy as np
import xarray as xr
from signaldrift._dask_guard import dask_hidden_from_xarray
from signaldrift._sweep import save_dataset



def dataset():  # making a Dataset is itself one of xarray's Dask checks
    return xr.Dataset({"loss": (("lr", "seed"), np.arange(6.0).reshape(3, 2)),
                       "diverged": (("lr", "seed"), np.zeros((3, 2), bool))},
                      coords={"lr": [1e-3, 1e-2, 1e-1], "seed": [0, 1]},
                      attrs={"swept": "lr"})


assert "dask" not in sys.modules
with dask_hidden_from_xarray() as hidden:
    assert hidden
    try:
        import dask  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("dask was importable inside the block")
    save_dataset(dataset(), sys.argv[1])
    assert sys.modules.get("dask") is None and sys.modules.get("distributed") is None
assert "dask" not in sys.modules and "distributed" not in sys.modules
save_dataset(dataset(), sys.argv[2])  # as xarray does by itself: imports Dask
assert "dask" in sys.modules
import dask.array as da
# xarray recognises Dask arrays again (its cached "not available" answer was dropped).
assert xr.DataArray(da.zeros(4, chunks=2)).chunks == ((2, 2),)
print("ok")
"""


def test_hidden_inside_the_block_same_bytes_and_dask_back_afterwards(tmp_path):
    a, b = tmp_path / "hidden.nc", tmp_path / "plain.nc"
    proc = subprocess.run([sys.executable, "-c", _GUARD, str(a), str(b)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert a.read_bytes() == b.read_bytes()


def test_already_imported_dask_is_left_alone():
    import dask  # noqa: F401

    from signaldrift._dask_guard import dask_hidden_from_xarray

    with dask_hidden_from_xarray() as hidden:
        assert not hidden
        assert sys.modules["dask"] is not None


def test_sweep_command_does_not_import_dask(tmp_path):
    # The command line's sweep (no --scheduler) runs without importing Dask: the 0.5 s
    # that xarray's Dask checks would cost a short sweep.
    code = ("import sys; from signaldrift._cli import main; "
            "rc = main(['sweep', '--d', '16', '--m', '16', '--rank', '2', '--task-rank', '2', "
            "'--steps', '5', '--lr', '0.01,0.02', '--no-cache', '--no-progress', "
            f"'--workers', '1', '--out', {str(tmp_path / 's.nc')!r}]); "
            "print(rc, 'dask' in sys.modules, 'distributed' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 False False"
    assert (tmp_path / "s.nc").exists()
