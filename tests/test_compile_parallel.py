"""compile_in_parallel: groups run in forked children first, then all of them here."""

from __future__ import annotations

import os
import sys

import pytest

from signaldrift._compile import compile_in_parallel

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _marker(folder, name):
    def fn():
        (folder / f"{name}.{os.getpid()}").write_text("")
    return fn


def test_cold_runs_the_other_groups_in_children_and_everything_here(tmp_path):
    groups = [_marker(tmp_path, "a"), _marker(tmp_path, "b"), _marker(tmp_path, "c")]
    compile_in_parallel(groups, cold=True)
    me = os.getpid()
    ran = sorted(p.name for p in tmp_path.iterdir())
    # Here: every group once. In children: b and c once each, under other pids.
    assert sorted(n for n in ran if n.endswith(f".{me}")) == [f"a.{me}", f"b.{me}", f"c.{me}"]
    others = sorted(n.split(".")[0] for n in ran if not n.endswith(f".{me}"))
    assert others == ["b", "c"]


def test_warm_runs_everything_here_only(tmp_path):
    compile_in_parallel([_marker(tmp_path, "a"), _marker(tmp_path, "b")], cold=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a.{os.getpid()}", f"b.{os.getpid()}"]


def test_a_failing_child_is_redone_here(tmp_path):
    me = os.getpid()

    def fails_in_child():
        if os.getpid() != me:
            raise RuntimeError("child only")
        (tmp_path / "done").write_text("")

    compile_in_parallel([_marker(tmp_path, "a"), fails_in_child], cold=True)
    assert (tmp_path / "done").exists()
    sys.stdout.flush()
