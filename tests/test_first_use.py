"""What a newcomer meets first (issue #13): the README's examples work verbatim, `make
figures` installs only what it uses, and the first-run Numba compile is announced."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from signaldrift._sweep import load_dataset

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(lang: str, first_line: str) -> str:
    """The README's fenced ``lang`` code block whose first line is ``first_line``."""
    for body in re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S):
        if body.splitlines()[0].strip() == first_line:
            return body
    raise AssertionError(f"README has no ```{lang} block starting with {first_line!r}")


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "signaldrift._cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_readme_run_toml_example_works_verbatim(tmp_path):
    command = "signaldrift simulate --config run.toml --seed 3"
    assert command in README
    (tmp_path / "run.toml").write_text(_block("toml", "# run.toml"))
    proc = _cli(command.split()[1:], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The file's settings reach the run: rule rslora, r = 16, s = α/√r = 32/4 = 8.
    assert "lora rule=rslora r=16 s=8 adam lr=0.001 steps=300" in proc.stdout


def test_readme_sweep_toml_example_works(tmp_path):
    (tmp_path / "sweep.toml").write_text(_block("toml", "[base]"))
    proc = _cli(["sweep", "--config", "sweep.toml", "--out", "s.nc", "--workers", "1",
                 "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "12 configurations (0 from cache, 12 run)" in proc.stdout
    ds = load_dataset(tmp_path / "s.nc")
    assert ds.final_loss.dims == ("lr", "alpha", "seed")  # the grid's order, as documented
    assert (tmp_path / ".sweep-cache").is_dir()  # the documented default cache folder


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_figures_does_not_install_torch(tmp_path):
    # `make -n` prints the commands without running them; a fresh VENV forces every step.
    def plan(target):
        # --no-print-directory: under `make test` (CI) this make is nested and would print
        # "make[1]: Entering directory …"
        proc = subprocess.run(["make", "--no-print-directory", "-n", target,
                               f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        return proc.stdout

    figures, test = plan("figures"), plan("test")
    assert "pip install --quiet -e ." in figures
    assert "torch" not in figures and "[" not in figures  # the package alone, no extras
    extras = set()
    for group in re.findall(r"-e '\.\[([^\]]*)\]'", test):
        extras.update(group.split(","))
    assert {"test", "torch"} <= extras, test
    assert "python -m pytest -q" in test


def test_cold_numba_cache_is_announced(tmp_path):
    # An empty NUMBA_CACHE_DIR is a first run: the kernels would be compiled, not loaded.
    code = ("import sys; from signaldrift._compile import announce_compile, kernels_cold; "
            "print(kernels_cold()); announce_compile(stream=sys.stdout); "
            "announce_compile(stream=sys.stdout)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1:] == ["signaldrift: compiling Numba kernels (first run only, 1-2 "
                         "minutes; later runs load them from the cache)..."]  # once only


def test_warm_numba_cache_is_silent(capsys):
    from signaldrift._compile import announce_compile, warm_up

    warm_up(["lora"])  # compiled or loaded now, in this process
    assert announce_compile(["lora"]) is False
    assert capsys.readouterr().err == ""
