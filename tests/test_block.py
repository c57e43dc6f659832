"""The batched engine: one kernel call advances a block of configurations (issue: sweeps at
the speed of the hardware). Results must be bit-identical to running each configuration
alone, whatever the block's size, order and thread count."""

from __future__ import annotations

import numpy as np
import pytest

import signaldrift as sd
from signaldrift._simulate import block_key, simulate_block

BASES = {
    "adam-population": sd.SimConfig(d=32, m=24, rank=4, task_rank=3, spectrum=1.0, steps=60,
                                    optimizer="adam", lr=1e-2, sharpness_steps=(0, 30),
                                    snapshot_steps=(0, 60)),
    "sgd-minibatch": sd.SimConfig(d=32, m=24, rank=4, task_rank=3, spectrum=1.0, steps=60,
                                  optimizer="sgd", lr=0.05, batch=8, noise=0.1,
                                  record_every=7),
    "adamw-trainset": sd.SimConfig(d=32, m=24, rank=4, task_rank=3, steps=60,
                                   optimizer="adamw", weight_decay=0.01, lr=1e-2,
                                   train_size=40, batch=6, noise=0.2),
    "full-minibatch": sd.SimConfig(d=16, m=12, task_rank=3, model="full", steps=40,
                                   optimizer="adam", lr=1e-2, batch=5),
}


def _variants(base: sd.SimConfig) -> list[sd.SimConfig]:
    # per-configuration scalars that may differ inside a block: seed (task, init, samples),
    # learning rate and schedule, scale (alpha), LoRA+ ratio, betas; one diverging run.
    out = [base.replace(seed=s) for s in range(3)]
    out.append(base.replace(seed=5, lr=base.lr * 3, schedule="cosine", warmup=5))
    out.append(base.replace(seed=6, beta1=0.8) if base.optimizer != "sgd"
               else base.replace(seed=6, momentum=0.5))
    if base.model == "lora":
        out.append(base.replace(seed=7, alpha=64.0, loraplus_lr_ratio=4.0))
    out.append(base.replace(seed=8, lr=base.lr * 1e4, divergence_bound=10.0))
    return out


def _same(a: sd.SimulationResult, b: sd.SimulationResult) -> None:
    assert a.diverged == b.diverged and a.diverged_step == b.diverged_step
    for name in a.records:
        np.testing.assert_array_equal(a.records[name], b.records[name], err_msg=name)
    np.testing.assert_array_equal(a.A, b.A)
    np.testing.assert_array_equal(a.B, b.B)
    for key in a.sharpness:
        np.testing.assert_array_equal(a.sharpness[key], b.sharpness[key])
    for key in a.snapshots:
        np.testing.assert_array_equal(a.snapshots[key], b.snapshots[key])


@pytest.mark.parametrize("name", list(BASES))
def test_block_is_bit_identical_to_single_runs(name):
    configs = _variants(BASES[name])
    assert len({block_key(c) for c in configs}) == 1
    alone = [sd.simulate(c) for c in configs]
    assert any(r.diverged for r in alone) and not all(r.diverged for r in alone)
    for threads in (1, 2):
        block = simulate_block(configs, threads=threads)
        for a, b in zip(alone, block):
            _same(a, b)
    # another order and block size: still the same bits
    rev = simulate_block(configs[::-1][:3], threads=2)
    for a, b in zip(alone[::-1][:3], rev):
        _same(a, b)


def test_block_refuses_mixed_shapes():
    a = BASES["adam-population"]
    with pytest.raises(sd.ConfigError, match="block"):
        simulate_block([a, a.replace(d=40)])


@pytest.mark.parametrize("batch, steps", [(8, 40), (600, 9)])
def test_shared_minibatch_streams_give_each_run_its_own_bits(batch, steps):
    # Configurations of one seed read the same sample streams, and the block kernel draws
    # their normals once per chunk of steps for all of them (lora_block). Each must still
    # equal its run alone, whatever the other members of its group do: different lr, α,
    # noise (one group mixes σ = 0 and σ > 0), tasks, a run that diverges mid-chunk, and
    # thread counts. With batch = 600 at d = 48 a chunk holds
    # ⌊SHARED_SAMPLE_DOUBLES / (600·48)⌋ = 2 steps, so runs cross chunk boundaries.
    from signaldrift._kernels import SHARED_SAMPLE_DOUBLES

    base = sd.SimConfig(d=48, m=40, rank=4, task_rank=3, spectrum=1.0, steps=steps,
                        optimizer="adam", lr=1e-2, batch=batch, record_every=3)
    if batch == 600:
        assert SHARED_SAMPLE_DOUBLES // (batch * base.d) == 2
    configs = []
    for seed in (0, 1):
        configs += [base.replace(seed=seed),
                    base.replace(seed=seed, lr=3e-3, alpha=64.0),
                    base.replace(seed=seed, noise=0.1),
                    base.replace(seed=seed, spectrum=0.5, decay=0.1),
                    base.replace(seed=seed, lr=30.0, divergence_bound=50.0)]
    configs = configs[::2] + configs[1::2]  # the same seeds far apart in the block
    alone = [sd.simulate(c) for c in configs]
    assert any(r.diverged for r in alone) and not all(r.diverged for r in alone)
    assert any(0 < r.diverged_step < steps - 1 for r in alone)
    for threads in (1, 2, 3):
        for a, b in zip(alone, simulate_block(configs, threads=threads)):
            _same(a, b)
