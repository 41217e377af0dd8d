"""Bad training input: every size, count, weight and step argument refused before any work, with its range."""

import math

import pytest
import torch

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.flows import build_flow
from openmm_bg.flows.builder import check_flow_arguments
from openmm_bg.systems import load
from openmm_bg.training import Stage, Trainer, default_stages, load_stages


@pytest.fixture(scope="module")
def tiny():
    system = load("double_well")
    data = openmm_bg.simulate(system, n_frames=60, stride=10, seed=0, platform="Reference", progress=False)
    return system, data, BoltzmannGenerator.build(system, data, n_blocks=1, hidden=(8,), seed=0)


@pytest.mark.parametrize(("fields", "message"), [
    ({"steps": 0}, r"steps must be an integer >= 1, got 0"),
    ({"steps": -100}, r"steps must be an integer >= 1, got -100"),
    ({"steps": 2.5}, r"steps must be an integer >= 1, got 2.5"),
    ({"steps": "100"}, r"steps must be an integer >= 1, got '100' \(str\)"),
    ({"steps": True}, r"steps must be an integer >= 1"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
    ({"kl_batch_size": -8, "kl": 1.0}, r"kl_batch_size must be an integer >= 1, got -8"),
    ({"ml": -1.0}, r"ml must be >= 0 and finite, got -1.0"),
    ({"ml": math.nan}, r"ml must be >= 0 and finite, got nan"),
    ({"kl": math.inf}, r"kl must be >= 0 and finite, got inf"),
    ({"kl_end": -0.1}, r"kl_end must be >= 0 and finite, got -0.1"),
    ({"rc": -1}, r"rc must be >= 0 and finite, got -1"),
    ({"lr": 0}, r"lr must be positive and finite, got 0"),
    ({"lr": -1e-3}, r"lr must be positive and finite, got -0.001"),
    ({"lr": math.nan}, r"lr must be positive and finite, got nan"),
    ({"lr_end": -1e-5}, r"lr_end must be >= 0 and finite, got -1e-05"),
    ({"temperature": 0}, r"temperature must be a positive, finite temperature in K, got 0"),
    ({"temperature": math.nan}, r"temperature must be a positive, finite temperature in K, got nan"),
    ({"temperature": math.inf}, r"temperature must be a positive, finite temperature in K, got inf"),
    ({"chirality_weight": -10.0}, r"chirality_weight must be >= 0 and finite, got -10.0"),
    ({"energy_high": math.nan}, r"energy_high must be finite \(kT\), got nan"),
    ({"energy_high": 100.0, "energy_max": 10.0}, r"energy_max must be a number >= energy_high \(100\)"),
    ({"energy_max": math.nan}, r"energy_max must be a number >= energy_high"),
    ({"clip_grad": 0.0}, r"clip_grad must be positive"),
    ({"ml": 0.0}, r"all loss weights \(ml, kl, kl_end, rc\) are 0: the stage would train nothing"),
])
def test_stage_refuses_fields_out_of_range(fields, message):
    with pytest.raises(ValueError, match=r"^Stage 'ml': " + message):
        Stage(**{"name": "ml", "steps": 10, **fields})


def test_stage_converts_and_accepts_its_range():
    stage = Stage("kl", steps=1e3, ml=0, kl=0, kl_end=1, batch_size=64.0, energy_max=math.inf, clip_grad=math.inf)
    assert stage.steps == 1000 and isinstance(stage.steps, int) and isinstance(stage.batch_size, int)
    assert stage.kl_weight(999) == 1.0 and stage.lr_end is None
    with pytest.raises(ValueError, match=r"^Stage name must be a non-empty string, got ''"):
        Stage("", steps=1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scale": 0}, r"^scale must be positive and finite, got 0"),
    ({"scale": -1.0}, r"^scale must be positive and finite, got -1.0"),
    ({"scale": math.nan}, r"^scale must be positive and finite, got nan"),
    ({"kl_scale": 0.0}, r"^kl_scale must be positive and finite, got 0.0"),
])
def test_default_stages_refuses_a_scale_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        default_stages(**kwargs)


@pytest.mark.parametrize(("toml", "message"), [
    ('[[stage]]\nsteps = "100"\n', r"stage 1 \('stage1'\): steps must be an integer >= 1, got '100' \(str\)"),
    ('[[stage]]\nsteps = 10\n\n[[stage]]\nname = "kl"\nsteps = -5\nkl = 1.0\n',
     r"stage 2 \('kl'\): steps must be an integer >= 1, got -5"),
    ('[[stage]]\nsteps = 10\nlr = "fast"\n', r"stage 1 \('stage1'\): lr must be positive and finite, got 'fast'"),
    ('[[stage]]\nsteps = 10\nbatch_size = 0\n', r"stage 1 \('stage1'\): batch_size must be an integer >= 1"),
    ('[[stage]]\nml = 1.0\n', r"stage 1 has no 'steps' \(an integer >= 1\)"),
    ('[stage]\nsteps = 10\n', r"'stage' must be an array of tables \(\[\[stage\]\], two brackets\)"),
    ('[[stage]]\nname = 3\nsteps = 10\n', r"stage 1 \(3\): Stage name must be a non-empty string, got 3"),
])
def test_stage_file_errors_name_the_stage_and_field(tmp_path, toml, message):
    path = tmp_path / "stages.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match=f"^{path}: " + message):
        load_stages(path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"checkpoint_every": 0}, r"^checkpoint_every must be an integer >= 1, got 0"),
    ({"checkpoint_every": -5}, r"^checkpoint_every must be an integer >= 1, got -5"),
    ({"seed": -1}, r"^seed must be an integer >= 0, got -1"),
    ({"seed": 1.5}, r"^seed must be an integer >= 0, got 1.5"),
    ({"stages": Stage("ml", 5)}, r"^stages must be a list of Stage, got Stage"),
    ({"stages": []}, r"^give at least one Stage"),
    ({"stages": [Stage("ml", 5), {"steps": 5}]}, r"^stages\[1\] must be a Stage, got dict"),
    ({"rc": 3}, r"^rc must be None, a name of the system's reaction coordinates \['x1', 'x2'\] or a "
                r"ReactionCoordinate"),
    ({"stages": [Stage("rc", 5, rc=1.0)]}, r"^a stage has an RC weight but no reaction coordinate"),
    ({"checkpoint": "/no/such/folder/run.ckpt"}, r"^checkpoint folder '/no/such/folder' does not exist"),
    ({"metrics": "/no/such/folder/m.csv"}, r"^metrics folder '/no/such/folder' does not exist"),
])
def test_trainer_refuses_bad_arguments_before_touching_the_data(tiny, kwargs, message):
    _, _, gen = tiny
    args = {"stages": [Stage("ml", 5)], **kwargs}
    with pytest.raises(ValueError, match=message):
        Trainer(gen, "no-such-data.h5", **args)  # the data would fail later: the argument is checked first


def test_trainer_refuses_a_stage_changed_after_construction_and_a_non_generator(tiny):
    system, data, gen = tiny
    stage = Stage("ml", 5)
    stage.steps = 0
    with pytest.raises(ValueError, match=r"^Stage 'ml': steps must be an integer >= 1, got 0"):
        Trainer(gen, data, [stage])
    with pytest.raises(ValueError, match=r"^generator must be a BoltzmannGenerator, got Flow"):
        Trainer(gen.flow, data, [Stage("ml", 5)])


def test_trainer_refuses_a_checkpoint_where_a_folder_is(tiny, tmp_path):
    _, data, gen = tiny
    with pytest.raises(ValueError, match=r"^checkpoint '.*' is a folder; give a file name"):
        Trainer(gen, data, [Stage("ml", 1)], checkpoint=tmp_path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_blocks": 0}, r"^n_blocks must be an integer >= 1, got 0"),
    ({"n_blocks": 2.5}, r"^n_blocks must be an integer >= 1, got 2.5"),
    ({"hidden": ()}, r"^hidden must be a non-empty sequence of layer widths \(integers >= 1\), got \(\)"),
    ({"hidden": 64}, r"^hidden must be a non-empty sequence of layer widths \(integers >= 1\), got 64"),
    ({"hidden": "64"}, r"^hidden must be a non-empty sequence"),
    ({"hidden": (32, 0)}, r"^hidden\[1\] must be an integer >= 1, got 0"),
    ({"bins": 1}, r"^bins must be an integer >= 2, got 1"),
    ({"tail_bound": 0.0}, r"^tail_bound must be positive and finite, got 0.0"),
    ({"scale_bound": math.nan}, r"^scale_bound must be positive and finite, got nan"),
    ({"kind": "glow"}, r"^kind must be 'realnvp' or 'spline', got 'glow'"),
    ({"dtype": torch.float16}, r"^dtype must be torch.float32 or torch.float64"),
    ({"activation": torch.tanh}, r"^activation must be a torch.nn.Module class"),
])
def test_flow_architecture_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_flow_arguments(**kwargs)
    with pytest.raises(ValueError, match=message):
        build_flow(3, **kwargs)


def test_build_flow_checks_n_dof_and_converts():
    with pytest.raises(ValueError, match=r"^n_dof must be an integer >= 1, got 0"):
        build_flow(0)
    flow = build_flow(2, n_blocks=1.0, hidden=[8.0], bins=4.0)
    assert flow.n_dof == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_blocks": 0}, r"^n_blocks must be an integer >= 1, got 0"),
    ({"hidden": (0,)}, r"^hidden\[0\] must be an integer >= 1, got 0"),
    ({"bins": 1}, r"^bins must be an integer >= 2, got 1"),
])
def test_generator_build_refuses_architecture_out_of_range(tiny, kwargs, message):
    system, data, _ = tiny
    with pytest.raises(ValueError, match=message):
        BoltzmannGenerator.build(system, data, **kwargs)


# ---------------------------------------------------------------------- 3. a checkpoint resumes only its own run
@pytest.fixture(scope="module")
def checkpointed(tiny, tmp_path_factory):
    """A finished 2-step run with its checkpoint."""
    system, data, _ = tiny
    ckpt = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    gen = BoltzmannGenerator.build(system, data, n_blocks=1, hidden=(8,), seed=0)
    Trainer(gen, data, [Stage("ml", 2, batch_size=16)], checkpoint=ckpt, progress=False).fit()
    return ckpt


def _resume(tiny, ckpt, data=None, stages=None, seed=0, **build):
    system, tiny_data, _ = tiny
    data = tiny_data if data is None else data
    gen = BoltzmannGenerator.build(system, data, **{"n_blocks": 1, "hidden": (8,), "seed": 0, **build})
    trainer = Trainer(gen, data, stages or [Stage("ml", 2, batch_size=16)], seed=seed, checkpoint=ckpt,
                      progress=False)
    return trainer.fit(resume=True)


@pytest.mark.parametrize(("change", "what"), [
    ({"data": "other"}, "training data"),
    ({"hidden": (16,)}, "hidden"),
    ({"n_blocks": 2}, "n_blocks"),
    ({"flow": "spline"}, "flow"),
    ({"seed": 1}, "seed"),
    ({"stages": [Stage("ml", 3, batch_size=16)]}, "stages"),
])
def test_resuming_another_run_is_one_clear_error(tiny, checkpointed, change, what):
    from openmm_bg.training.trainer import CheckpointMismatchError

    system, data, _ = tiny
    if change.get("data") == "other":
        change = {"data": openmm_bg.simulate(system, n_frames=60, stride=10, seed=1, platform="Reference",
                                             progress=False)}
    before = checkpointed.read_bytes()
    with pytest.raises(CheckpointMismatchError, match=r"^cannot resume from .*run.ckpt: it was written by another "
                       r"training run \(different .*" + what + r".*\); start over with --restart") as info:
        _resume(tiny, checkpointed, **change)
    assert "\n" not in str(info.value) and what in " ".join(info.value.differences)
    assert checkpointed.read_bytes() == before  # the other run's checkpoint is kept


def test_the_same_run_resumes_and_an_old_checkpoint_is_refused(tiny, checkpointed, tmp_path):
    history = _resume(tiny, checkpointed)
    assert len(history) == 2 and history[-1]["step"] == 2  # restored, no step trained twice
    state = torch.load(checkpointed, weights_only=False)
    del state["run"]  # as written before checkpoints recorded their run
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    with pytest.raises(ValueError, match=r"^cannot resume from .*old.ckpt: it was written by an older openmm-bg "
                       r"that did not record what the run was made from; start over with --restart"):
        _resume(tiny, old)
