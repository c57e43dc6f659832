"""The guard that keeps Numba's on-disk cache consistent with the sources
(signaldrift/_jit_cache.py): a changed source file purges the package's cache files."""

import importlib

import pytest

from signaldrift import _jit_cache


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    (root / "_generated" / "__pycache__").mkdir(parents=True)
    (root / "__pycache__").mkdir()
    (root / "_kernels.py").write_text("import numba\nfrom ._rng import y\n"
                                      "from ._generated.factorised import (\n    z,\n)\nx = 1\n")
    (root / "_rng.py").write_text("from . import _consts, _unused as u\ny = 2\n")
    (root / "_consts.py").write_text("c = 4\n")
    (root / "_unused.py").write_text("u = 5\n")
    (root / "_generated" / "factorised.py").write_text("z = 3\n")
    (root / "_cli.py").write_text("def main():\n    from ._kernels import x\n")
    monkeypatch.setattr(_jit_cache, "_ROOT", root)
    monkeypatch.setattr(_jit_cache, "_DIRS", (root, root / "_generated"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    return root


def _cache_files(root):
    files = [root / "__pycache__" / "_kernels.lora_run-1.py311.nbi",
             root / "__pycache__" / "_kernels.lora_run-1.py311.1.nbc",
             root / "_generated" / "__pycache__" / "factorised.grad_A-1.py311.nbi"]
    for f in files:
        f.write_bytes(b"cached")
    return files


def test_changed_callee_source_purges_every_cache_file(fake_package):
    files = _cache_files(fake_package)
    assert _jit_cache.purge_stale()  # no stamp yet: purge and stamp
    assert not any(f.exists() for f in files)
    files = _cache_files(fake_package)
    assert not _jit_cache.purge_stale()  # unchanged sources: the cache is kept
    assert all(f.exists() for f in files)
    # An edit of a callee's module (not the kernel's own file) must purge the kernels too:
    # Numba itself would keep loading the stale lora_run.
    (fake_package / "_rng.py").write_text("y = 3\n")
    assert _jit_cache.purge_stale()
    assert not any(f.exists() for f in files)
    (fake_package / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"bytecode")
    assert not _jit_cache.purge_stale()
    assert (fake_package / "__pycache__" / "other.cpython-311.pyc").exists()


def test_compiled_sources_follow_module_level_imports_of_numba_modules(fake_package):
    # _kernels mentions numba; it imports _rng and _generated.factorised at module level,
    # and _rng imports _consts and _unused (``from . import``); _cli only imports inside a
    # function, so jitted code cannot read its globals.
    names = [p.relative_to(fake_package).as_posix() for p in _jit_cache.compiled_sources()]
    assert names == ["_consts.py", "_generated/factorised.py", "_kernels.py", "_rng.py",
                     "_unused.py"]
    files = _cache_files(fake_package)
    _jit_cache.purge_stale()
    files = _cache_files(fake_package)
    (fake_package / "_cli.py").write_text("def main():\n    return 2\n")
    assert not _jit_cache.purge_stale()  # the command line changed: the kernels stay
    assert all(f.exists() for f in files)
    (fake_package / "_consts.py").write_text("c = 5\n")  # two imports away from numba
    assert _jit_cache.purge_stale()
    assert not any(f.exists() for f in files)


def test_numba_cache_dir_elsewhere_is_left_alone(fake_package, monkeypatch):
    files = _cache_files(fake_package)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(fake_package / "elsewhere"))
    assert not _jit_cache.purge_stale()
    assert all(f.exists() for f in files)


def test_the_real_package_is_stamped_on_import():
    import signaldrift

    importlib.reload(signaldrift)
    stamp = _jit_cache._ROOT / "__pycache__" / _jit_cache._STAMP
    if stamp.parent.exists() and not _jit_cache.os.environ.get("NUMBA_CACHE_DIR"):
        assert stamp.read_text().strip() == _jit_cache.fingerprint()
