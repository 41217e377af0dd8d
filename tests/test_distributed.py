"""Data-parallel training and sharded sampling on torch.distributed (gloo, 2 ranks on CPU, torchrun).

One real torchrun job of ``tests/distributed_worker.py`` on the double well (float64, Reference
platform) samples and trains on 2 ranks, then trains again and loses rank 1 (SIGKILL) mid-way.
Everything is compared with one process running the same shards. The RC loss (a batch-coupled
KDE) is in the compared schedule: it is taken per shard, so it does not depend on the number of
ranks. So are the adaptive recipe's parts (early stopping and the ML weight on held-out data, FAB with
one annealing run and one replay buffer per shard): a 2-rank run stopped mid-FAB and resumed on 2
ranks, and its mid-FAB checkpoint resumed on 1, equal one process.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import distributed_worker as worker
import numpy as np
import pytest
import torch

from openmm_bg.analysis.free_energy import free_energy_profile, state_free_energy
from openmm_bg.analysis.merge import as_shard, merge_sample_files, merge_samples
from openmm_bg.analysis.samples import Samples
from openmm_bg.distributed import (
    RankInfo,
    check_shards,
    energy_options,
    rank_info,
    shard_sizes,
    shards_of_rank,
    stream_seed,
)
from openmm_bg.model.sharded import part_path, sample_shards
from openmm_bg.training import DistributedTrainer, Stage, Trainer
from openmm_bg.training.trainer import CheckpointMismatchError

WORKER = Path(worker.__file__)
#: Seconds the torchrun job may take on a loaded 2-core machine.
JOB_LIMIT_S = 300
#: Rank 1 dies before step DIE_AT + 1 (checkpoints every 2 steps: the last one is of step DIE_AT - 1).
DIE_AT = 5
#: Columns of the metrics compared between runs.
COLUMNS = ("loss", "ml", "kl", "rc", "u_mean", "grad_norm", "out_of_domain", "energy_evaluations")
#: Columns of the adaptive run's metrics compared between runs.
FAB_COLUMNS = ("loss", "ml", "fab", "grad_norm", "energy_evaluations", "val_nll", "w_ml", "fab_ess", "fab_levels",
               "restored_step", "early_stop")


def torchrun(data: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               str(data), str(out), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=JOB_LIMIT_S)
    return done, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(state: dict) -> dict:
    """The trainable weights (floats) of a flow's state dict."""
    return {k: v.clone() for k, v in state.items() if v.is_floating_point()}


def assert_same_run(history: list[dict], reference: list[dict], columns=COLUMNS) -> None:
    assert [r["step"] for r in history] == [r["step"] for r in reference]
    for key in columns:
        got = np.array([r.get(key, math.nan) for r in history], dtype=float)
        want = np.array([r.get(key, math.nan) for r in reference], dtype=float)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13, equal_nan=True, err_msg=key)


def assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-13, msg=key)


def lower(x):
    return x[:, 0, 1] < 0.0


def upper(x):
    return x[:, 0, 1] >= 0.0


@pytest.fixture(scope="module")
def data_file(dw_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distributed") / "dw.h5"
    dw_data.save_hdf5(str(path))
    return path


@pytest.fixture(scope="module")
def reference(data_file, tmp_path_factory):
    """One process, the same 4 shards: history and final weights."""
    gen = worker.generator(data_file)
    history = worker.trainer(gen, data_file, tmp_path_factory.mktemp("one_rank")).fit()
    return history, weights(gen.flow.state_dict())


@pytest.fixture(scope="module")
def fab_reference(data_file, tmp_path_factory):
    """The adaptive run on one process, the same 4 shards: history and final weights."""
    gen = worker.generator(data_file)
    history = worker.fab_trainer(gen, data_file, tmp_path_factory.mktemp("fab_one_rank")).fit()
    return history, weights(gen.flow.state_dict())


@pytest.fixture(scope="module")
def two_ranks(data_file, tmp_path_factory):
    """The torchrun job on 2 ranks: sharded samples, sharded training, then training that loses rank 1."""
    out = tmp_path_factory.mktemp("two_ranks")
    done, elapsed = torchrun(data_file, out, "--die-at", str(DIE_AT))
    assert (out / "full" / "weights.pt").is_file(), done.stderr[-3000:]  # the runs before the kill went through
    return out, done, elapsed


def test_two_ranks_train_like_one_and_say_so(two_ranks, reference):
    out, done, _ = two_ranks
    assert "training on 2 ranks (backend gloo), 4 shards per batch" in done.stdout
    out = out / "full"
    history = json.loads((out / "metrics.json").read_text())
    assert len(history) == 12 and all(r["skipped"] == 0 for r in history)
    assert not math.isnan(history[-1]["rc"])  # the batch-coupled RC term is in the compared steps
    assert_same_run(history, reference[0])
    assert_same_weights(weights(torch.load(out / "weights.pt")), reference[1])
    state = torch.load(out / "run.ckpt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 12 and state["run"]["shards"] == 4
    assert not list(out.glob(".*.tmp"))  # rank 0 wrote atomically, nothing left behind


def test_adaptive_recipe_on_two_ranks_trains_like_one(two_ranks, fab_reference):
    out = two_ranks[0] / "fab"
    history = json.loads((out / "metrics.json").read_text())
    reference = fab_reference[0]
    assert len(history) == 11 and all(r["skipped"] == 0 for r in history)
    # the compared steps hold held-out checks, a restore of the best ML weights, FAB terms, annealing runs
    # after the resume and an ML weight that held-out data moved
    assert sum("val_nll" in r for r in history) >= 5 and any("restored_step" in r for r in reference)
    assert all(math.isfinite(r["fab"]) for r in history[4:]) and "fab_ess" in history[worker.FAB_STOP + 1]
    assert len({r["w_ml"] for r in history[4:]}) > 1
    assert_same_run(history, reference, FAB_COLUMNS)
    assert_same_weights(weights(torch.load(out / "weights.pt")), fab_reference[1])
    state = torch.load(out / "run.ckpt", weights_only=False)
    assert state["world_size"] == 2 and state["run"]["recipe"] == "classic" and state["run"]["validation"] == 0.2
    buffers = state["shard_fab"]["buffers"]  # every shard's, gathered from both ranks
    assert sorted(buffers) == [0, 1, 2, 3] and all(len(b[1]["log_weights"]) > 0 for b in buffers.values())


def test_mid_fab_checkpoint_of_two_ranks_resumes_on_one(two_ranks, data_file, fab_reference, tmp_path):
    half = torch.load(two_ranks[0] / "fab" / "half.ckpt", weights_only=False)
    assert half["step"] == worker.FAB_STOP and half["world_size"] == 2
    assert sorted(half["shard_fab"]["buffers"]) == [0, 1, 2, 3]
    (tmp_path / "run.ckpt").write_bytes((two_ranks[0] / "fab" / "half.ckpt").read_bytes())
    gen = worker.generator(data_file)
    resumed = worker.fab_trainer(gen, data_file, tmp_path)
    assert resumed.info.world_size == 1
    history = resumed.fit(resume=True)
    assert_same_run(history, fab_reference[0], FAB_COLUMNS)
    assert_same_weights(weights(gen.flow.state_dict()), fab_reference[1])


def test_killed_rank_ends_job_quickly_and_checkpoint_resumes_on_one_rank(two_ranks, data_file, reference):
    out, done, elapsed = two_ranks
    assert done.returncode != 0 and elapsed < JOB_LIMIT_S  # ended, not hung until the test's timeout
    # torchrun stops the other rank and names the one that died
    assert "FAILED" in done.stderr and "rank      : 1" in done.stderr and "SIGKILL" in done.stderr
    out = out / "killed"
    state = torch.load(out / "run.ckpt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == DIE_AT - 1  # the last checkpoint before the death
    gen = worker.generator(data_file)
    resumed = worker.trainer(gen, data_file, out)
    assert resumed.info.world_size == 1
    history = resumed.fit(resume=True)
    assert_same_run(history, reference[0])
    assert_same_weights(weights(gen.flow.state_dict()), reference[1])


def test_sharded_sampling_merges_to_one_process(two_ranks, data_file, dw):
    out, _, _ = two_ranks
    gen = worker.generator(data_file)
    for name, (n, options) in worker.SAMPLE_SETS.items():
        one = sample_shards(gen, n, seed=worker.SAMPLE_SEED, shards=worker.SHARDS, **options)
        union = Samples.load(out / f"{name}.npz", dw)
        assert len(union) == n and union.provenance["kind"] == one.provenance["kind"]
        np.testing.assert_array_equal(union.positions, one.positions)
        np.testing.assert_array_equal(union.log_weights, one.log_weights)
        assert union.ess == one.ess
        a, b = (state_free_energy(s, lower, upper, min_ess=1.0, n_bootstrap=20, seed=0, warn=False)
                for s in (union, one))
        assert a.delta_a_kT == b.delta_a_kT and a.error_kT == b.error_kT and math.isfinite(a.delta_a_kT)
        np.testing.assert_array_equal(free_energy_profile(union, "x1", bins=10).free_energy_kT,
                                      free_energy_profile(one, "x1", bins=10).free_energy_kT)
        # each rank wrote its own file, with its own half of the shards
        halves = [Samples.load(part_path(out / f"{name}.npz", r, 2), dw) for r in (0, 1)]
        assert [[s["shard"] for s in h.provenance["shards"]] for h in halves] == [[0, 1], [2, 3]]
    annealed = Samples.load(out / "annealed.npz", dw)
    records = annealed.provenance["shards"]
    z = np.array([r["log_normalizer"] for r in records])  # equal shards: the mean of the shards' normalisers
    assert annealed.log_normalizer == pytest.approx(np.logaddexp.reduce(z) - math.log(len(z)), abs=1e-12)
    assert len(set(z)) == len(z)  # independent streams
    assert annealed.ancestors.max() < len(annealed) and (annealed.ancestors[:20] < 20).all()  # lineages per shard


@pytest.mark.slow
def test_surviving_rank_says_what_happened_without_torchrun(data_file, tmp_path):
    """Ranks started by hand (as srun does, no torchrun agent to stop them): the survivor's collective fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(WORKER), str(data_file), str(tmp_path), "--die-at", "3", "--only-kill"]
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    _, err = ranks[0].communicate(timeout=JOB_LIMIT_S)
    ranks[1].wait(timeout=JOB_LIMIT_S)
    assert ranks[1].returncode == -9 and ranks[0].returncode != 0
    assert "rank 0 of 2 stopped at step 3" in err and "resume from" in err and "run.ckpt" in err


# ---------------------------------------------------------------------- in-process checks
def test_streams_and_shards_do_not_depend_on_ranks():
    assert shard_sizes(10, 4) == [3, 3, 2, 2] and sum(shard_sizes(7, 8)) == 7
    for ranks in (1, 2, 3, 8):
        blocks = [shards_of_rank(r, ranks, 8) for r in range(ranks)]
        assert sum(blocks, []) == list(range(8)) and all(blocks)
    seeds = {stream_seed(0, 1, step, shard) for step in range(5) for shard in range(8)}
    assert len(seeds) == 40 and all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        check_shards(2, 4)
    with pytest.raises(ValueError, match="not an integer"):
        rank_info({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="inconsistent rank"):
        rank_info({"WORLD_SIZE": "2", "RANK": "2"})
    info = rank_info({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (info.rank, info.local_rank, info.distributed, info.is_main) == (3, 1, True, False)
    cores = len(os.sched_getaffinity(0))
    assert energy_options(RankInfo(0, 2, 0, 2))["n_workers"] == max(1, cores // 2)


def test_merge_refuses_shards_of_other_runs_and_repeats(dw_gen):
    a = sample_shards(dw_gen, 20, seed=0, shards=4, rank=0, world_size=2)
    b = sample_shards(dw_gen, 20, seed=1, shards=4, rank=1, world_size=2)
    with pytest.raises(ValueError, match="another 'seed'"):
        merge_samples([a, b])
    with pytest.raises(ValueError, match="shard 0 is in sets"):
        merge_samples([a, a])
    with pytest.raises(ValueError, match="not a set of shards"):
        merge_samples([dw_gen.sample(5)])
    with pytest.raises(ValueError, match="already holds shards"):
        as_shard(a, 0, 4)
    with pytest.raises(ValueError, match="cannot fill 4 shards"):
        sample_shards(dw_gen, 3, shards=4)


def test_merge_of_files_keeps_the_union(dw_gen, tmp_path):
    parts = [sample_shards(dw_gen, 30, seed=2, shards=3, rank=r, world_size=3).save(tmp_path / f"p{r}.npz")
             for r in (2, 0, 1)]
    merged = merge_sample_files(parts, dw_gen.system)
    one = sample_shards(dw_gen, 30, seed=2, shards=3)
    np.testing.assert_array_equal(merged.log_weights, one.log_weights)
    assert merged.has_proposal_density and merged.provenance["seed"] == 2


def test_sharded_trainer_checks_batches_and_runs_are_told_apart(dw_gen, dw_data, tmp_path):
    with pytest.raises(ValueError, match="batch_size=2 .* smaller than shards=4"):
        DistributedTrainer(dw_gen, dw_data, [Stage("ml", steps=2, batch_size=2)], shards=4, progress=False)
    stages = [Stage("ml", steps=2, batch_size=16)]
    ckpt = tmp_path / "run.ckpt"
    DistributedTrainer(dw_gen, dw_data, stages, shards=4, checkpoint=ckpt, progress=False).fit()
    with pytest.raises(CheckpointMismatchError, match="shards") as err:
        Trainer(dw_gen, dw_data, stages, checkpoint=ckpt, progress=False).fit(resume=True)
    assert err.value.differences == ["shards"]
    with pytest.raises(CheckpointMismatchError, match="shards"):
        DistributedTrainer(dw_gen, dw_data, stages, shards=2, checkpoint=ckpt, progress=False).fit(resume=True)


# ---------------------------------------------------------------------- command line
def test_merge_samples_command_merges_rank_files(dw_gen, tmp_path, capsys):
    from openmm_bg.apps.cli import main

    model = dw_gen.save(tmp_path / "model.bg", extra={"system_spec": {"name": "double_well", "options": {}}})
    parts = [sample_shards(dw_gen, 40, seed=5, shards=4, rank=r, world_size=2).save(part_path(tmp_path / "s.npz", r, 2))
             for r in (0, 1)]
    assert main(["merge-samples", str(model), "-o", str(tmp_path / "s.npz"), *map(str, parts)]) == 0
    assert "4 of 4 shards" in capsys.readouterr().out
    merged = Samples.load(tmp_path / "s.npz", dw_gen.system)
    np.testing.assert_array_equal(merged.log_weights, sample_shards(dw_gen, 40, seed=5, shards=4).log_weights)
    assert main(["merge-samples", str(model), "-o", str(tmp_path / "t.npz"), str(parts[0]), str(parts[0])]) == 2
    assert "shard 0 is in sets[0] and sets[1]" in capsys.readouterr().err


def test_command_line_refuses_what_does_not_shard(dw_gen, tmp_path, capsys, monkeypatch):
    from openmm_bg.apps.cli import main

    model = dw_gen.save(tmp_path / "model.bg", extra={"system_spec": {"name": "double_well", "options": {}}})
    args = ["sample", str(model), "-n", "8", "-o", str(tmp_path / "s.npz")]
    assert main([*args, "--shards", "4", "--trajectory", str(tmp_path / "s.h5")]) == 2
    assert "--trajectory is not made by sharded sampling" in capsys.readouterr().err
    assert main([*args, "--shards", "16"]) == 2
    assert "cannot fill 16 shards" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--shards", "0"])
    assert "argument --shards" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["free-energy", str(model), "--states", "left,right", "-o", str(tmp_path / "fe")]) == 2
    assert "'free-energy' runs on one process" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "fe").exists()


@pytest.mark.slow
def test_torchrun_command_line_trains_and_samples_on_two_ranks(data_file, tmp_path):
    """``torchrun --no-python openmm-bg train/sample`` on 2 ranks, then the same shards on one process."""
    (tmp_path / "stages.toml").write_text('[[stage]]\nname = "ml"\nsteps = 4\nbatch_size = 32\n'
                                          '[[stage]]\nname = "kl"\nsteps = 2\nml = 0.5\nkl = 1.0\nbatch_size = 32\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
              "openmm-bg"]

    def run(*args, ranks=True):
        done = subprocess.run([*(launch if ranks else ["openmm-bg"]), *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=JOB_LIMIT_S)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = run("train", "double_well", "--data", str(data_file), "--config", "stages.toml", "--n-blocks", "2",
              "--hidden", "16", "--shards", "4", "-o", "model.bg")
    assert "training on 2 ranks (backend gloo), 4 shards per batch" in out and "trained 6 steps" in out
    out = run("sample", "model.bg", "-n", "400", "--shards", "4", "-o", "two.npz")
    assert "wrote the weighted samples of 2 ranks" in out
    run("sample", "model.bg", "-n", "400", "--shards", "4", "-o", "one.npz", ranks=False)
    two, one = (np.load(tmp_path / f"{name}.npz") for name in ("two", "one"))
    np.testing.assert_array_equal(two["log_weights"], one["log_weights"])


def test_command_line_shards_the_adaptive_recipe(data_file, tmp_path, capsys):
    """``train --recipe adaptive --shards`` (refused before FAB sharded) runs, here on one process."""
    from openmm_bg.apps.cli import main
    from openmm_bg.model.fileformat import read_model_file

    model = tmp_path / "model.bg"
    assert main(["train", "double_well", "--data", str(data_file), "--recipe", "adaptive", "--steps-scale", "0.005",
                 "--n-blocks", "2", "--hidden", "16", "--shards", "4", "--coverage-samples", "200",
                 "-o", str(model)]) == 0
    out = capsys.readouterr().out
    assert "training on 1 rank (one process), 4 shards per batch" in out and "recipe adaptive" in out
    training = read_model_file(model)["extra"]["training"]
    assert training["recipe"] == "adaptive" and training["validation"] == 0.2
    header = (tmp_path / "model_training.csv").read_text().splitlines()[0].split(",")
    assert {"val_nll", "fab", "fab_ess", "w_ml"} <= set(header)
    state = torch.load(tmp_path / "model.bg.ckpt", weights_only=False)
    assert state["run"]["shards"] == 4 and sorted(state["shard_fab"]["buffers"]) == [0, 1, 2, 3]


@pytest.mark.slow
def test_torchrun_command_line_adaptive_recipe_two_ranks_like_one(data_file, tmp_path):
    """``torchrun ... openmm-bg train --recipe adaptive --shards 4`` on 2 ranks: the metrics of one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python"]
    args = ["openmm-bg", "train", "double_well", "--data", str(data_file), "--recipe", "adaptive", "--steps-scale",
            "0.01", "--n-blocks", "2", "--hidden", "16", "--shards", "4", "--coverage-samples", "200"]
    for name, prefix in (("two", launch), ("one", [])):
        done = subprocess.run([*prefix, *args, "-o", f"{name}.bg"], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=JOB_LIMIT_S)
        assert done.returncode == 0, done.stderr[-3000:]
    two, one = (list(csv.DictReader(open(tmp_path / f"{name}_training.csv"))) for name in ("two", "one"))
    assert len(two) == len(one) > 0 and any(r["fab"] for r in two)
    # the command line's flow is float32: the all-reduce rounds otherwise than one process's sum (~1e-7 per
    # step), so values agree closely and every decision (steps, ML weight, restores, annealing levels) exactly
    for key in ("stage", "w_ml", "restored_step", "early_stop", "fab_levels", "energy_evaluations"):
        assert [r.get(key) for r in two] == [r.get(key) for r in one], key
    for key in ("loss", "ml", "fab", "val_nll", "fab_ess"):
        got = np.array([float(r[key] or "nan") for r in two])
        want = np.array([float(r[key] or "nan") for r in one])
        np.testing.assert_allclose(got, want, rtol=1e-5, equal_nan=True, err_msg=key)
