"""Symbolic derivations (THEORY.md §2–§5): every identity, the algebra, the CLI and scripts."""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

from signaldrift import ConfigError
from signaldrift._derivations import NAMES, _codegen, load
from signaldrift._derivations._algebra import (WordSum, factorise, norm_sq, trace,
                                               transpose_word, words)
from signaldrift._derivations._common import (A, B, Sigma, dA, dB, eta, explicit_zero, s)
from signaldrift._derivations.signal_drift import decomposition, exponent, rho_exponents
from signaldrift._derive import add_parser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=NAMES)
def derivation(request):
    return load(request.param).derive()


def test_every_identity_holds(derivation):
    # Each check is an identity verified symbolically (trace identities or explicit matrices
    # of sizes m=3, d=4, r=2, k=2) or numerically (seeded float64, rtol 1e-12; Monte Carlo
    # checks state their own tolerance).
    assert derivation.checks
    assert not derivation.failed, "\n".join(f"{c.name}: {c.detail}" for c in derivation.failed)


def test_report_has_text_and_latex(derivation):
    report = derivation.report()
    assert "-- plain text" in report and "-- LaTeX" in report and "[ok]" in report


# ----------------------------------------------------------------------------- algebra
def test_trace_canonical_form_is_cyclic_and_transpose_invariant():
    X, Y, Z = (sp.MatrixSymbol(n, 3, 3) for n in "XYZ")
    base = trace(words(X * Y * Z))
    assert (trace(words(Z * X * Y)) - base).is_zero()
    assert (trace(words((X * Y * Z).T)) - base).is_zero()
    assert not (trace(words(X * Z * Y)) - base).is_zero()  # not a cyclic permutation


def test_factorise_rewrites_and_refuses():
    ws = norm_sq(s * B * A)  # s²tr(AᵀBᵀBA) = s²tr(BᵀB·AAᵀ)
    defs = {"BtB": words(B.T * B).terms[0][0], "AAt": words(A * A.T).terms[0][0]}
    out = factorise(ws, defs)
    assert out.terms == (((("AAt", False), ("BtB", False)), s**2),)
    with pytest.raises(ValueError, match="cannot write"):
        factorise(trace(words(A * Sigma * A.T)), defs)


def test_explicit_zero_detects_a_wrong_identity():
    S, D = decomposition()
    dW = s * (B + dB) * (A + dA) - s * B * A
    assert explicit_zero(dW - S - D)
    assert not explicit_zero(dW - S - 2 * D)


def test_exponent_reads_powers_and_rejects_mixed_scaling():
    ws = WordSum.build([(((("A", False),)), eta**2 * s)], True)
    assert exponent(ws, eta) == 2 and exponent(ws, s) == 1
    mixed = WordSum.build([(((("A", False),)), eta), (((("B", False),)), eta**2)], True)
    with pytest.raises(ValueError):
        exponent(mixed, eta)
    # A drift that scaled as η³ would give ρ ∝ η²: the exponent follows the formulas.
    S, D = decomposition()
    assert rho_exponents(S.xreplace({dA: eta * dA, dB: eta * dB}),
                         D.xreplace({dA: eta**2 * dA, dB: eta * dB}))[eta] == 2


def test_transpose_word_keeps_diagonal_letters():
    assert transpose_word((("A", False), ("Sigma", False))) == (("Sigma", False), ("A", True))


# ----------------------------------------------------------------------------- CLI
def _run(argv):
    parser = argparse.ArgumentParser(prog="signaldrift")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["derive", *argv])
    return args.func(args)


def test_cli_lists_results(capsys):
    assert _run([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


def test_cli_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        _run(["nope"])
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in NAMES)


def test_cli_check_and_write_are_exclusive():
    with pytest.raises(ConfigError):
        _run(["--check", "--write"])


def test_cli_prints_one_result(capsys):
    assert _run(["loss_change"]) == 0
    out = capsys.readouterr().out
    assert "-- LaTeX" in out and r"\operatorname{tr}" in out


def test_cli_check_fails_on_stale_generated_code(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "_generated"
    shutil.copytree(_codegen.GENERATED_DIR, stale, ignore=shutil.ignore_patterns("__pycache__"))
    path = stale / "factorised.py"
    path.write_text(path.read_text().replace("(1/2)*c_loss", "0.5*c_loss"))
    monkeypatch.setattr(_codegen, "GENERATED_DIR", stale)
    assert _run(["factorised", "--check"]) == 1
    out = capsys.readouterr().out
    assert "+        + (1/2)*c_loss" in out and "signaldrift derive --write" in out
    assert "FAILED: generated" in out
    # --write repairs it, after which --check passes.
    assert _run(["--write"]) == 0
    assert _run(["factorised", "--check"]) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_scripts_run_and_import():
    proc = subprocess.run([sys.executable, str(REPO / "derivations" / "loss_change.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "-- LaTeX" in proc.stdout
    sys.path.insert(0, str(REPO))
    try:
        import derivations.signal_drift as script
    finally:
        sys.path.remove(str(REPO))
    assert script.derive is load("signal_drift").derive


def test_derive_check_passes_end_to_end():
    # Issue 3's criterion, as CI sees it: the installed command re-derives every result,
    # verifies every identity and finds signaldrift/_generated up to date (exit 0).
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "signaldrift._cli", "derive", "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "all checks passed" in proc.stdout
    assert "generated: signaldrift/_generated is up to date" in proc.stdout
