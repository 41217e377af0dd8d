"""``--device cpu|cuda|cuda:K|auto`` of ``openmm-bg train``, ``sample``, ``free-energy`` and ``simulate``
(issue 15, GPU): bad values are refused before any work with one error line; ``--device cpu`` (and
``auto`` without a usable GPU) is the default path, bit for bit. The CUDA runs skip where torch sees no
GPU or OpenMM has no CUDA platform."""

import mdtraj
import numpy as np
import pytest
import torch

import openmm_bg
from openmm_bg.apps.cli import main
from openmm_bg.energy import available_platforms
from openmm_bg.energy.devices import resolve_device
from openmm_bg.model.fileformat import read_model_file
from openmm_bg.systems import load

GPU = torch.cuda.is_available() and "CUDA" in available_platforms()
cuda = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU seen by torch and OpenMM's CUDA platform")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where torch sees no GPU")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_device")
    data, model = root / "md.h5", root / "model.bg"
    openmm_bg.simulate(load("double_well"), n_frames=120, stride=10, seed=0, platform="Reference",
                       progress=False).save(str(data))
    config = root / "stages.toml"
    config.write_text('[[stage]]\nsteps = 3\nbatch_size = 32\n\n[[stage]]\nname = "kl"\nsteps = 2\nkl = 1.0\n'
                      'batch_size = 32\nkl_batch_size = 16\n')
    train = ["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "1", "--hidden",
             "8", "--coverage-samples", "64"]
    assert main([*train, "-o", str(model)]) == 0
    return {"root": root, "data": data, "model": model, "train": train}


def _commands(files, device: str, out) -> dict[str, list[str]]:
    return {"train": [*files["train"], "--device", device, "-o", str(out / "m.bg")],
            "sample": ["sample", str(files["model"]), "-n", "32", "--device", device, "-o", str(out / "s.npz")],
            "free-energy": ["free-energy", str(files["model"]), "-n", "32", "--device", device,
                            "--state", "a:x < 0", "--state", "b:x > 0", "--bootstrap", "2", "-o", str(out / "fe")],
            "simulate": ["simulate", "double_well", "-n", "2", "--device", device, "-o", str(out / "md.h5")]}


def _outputs(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("command", ["train", "sample", "free-energy", "simulate"])
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_a_bad_device_is_one_error_line_before_any_work(files, command, device, tmp_path, capsys):
    assert main(_commands(files, device, tmp_path)[command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("openmm-bg: error: --device must be 'cpu', 'cuda' or 'cuda:N'")
    assert "'auto'" in err[0] and repr(device) in err[0]
    assert _outputs(tmp_path) == []  # nothing written: refused before any MD, training or sampling


@no_cuda
@pytest.mark.parametrize("command", ["train", "sample", "simulate"])
def test_cuda_without_a_gpu_names_the_problem_and_the_fix(files, command, tmp_path, capsys):
    assert main(_commands(files, "cuda", tmp_path)[command]) == 2
    err = capsys.readouterr().err
    assert "--device='cuda': torch sees no CUDA GPU here" in err and "use --device='cpu'" in err
    assert _outputs(tmp_path) == []


def test_train_and_sample_with_device_cpu_are_the_default_bit_for_bit(files, tmp_path):
    model = tmp_path / "cpu.bg"
    assert main([*files["train"], "--device", "cpu", "-o", str(model)]) == 0
    ours, theirs = read_model_file(model)["flow_state"], read_model_file(files["model"])["flow_state"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        assert main(["sample", str(files["model"]), "-n", "64", "--seed", "3", *extra,
                     "-o", str(tmp_path / f"{name}.npz")]) == 0
    with np.load(tmp_path / "default.npz") as a, np.load(tmp_path / "cpu.npz") as b:
        assert np.array_equal(a["positions"], b["positions"]) and np.array_equal(a["log_weights"], b["log_weights"])


@pytest.mark.skipif(GPU, reason="auto picks the GPU here")
def test_device_auto_without_a_usable_gpu_is_the_cpu(files, tmp_path):
    assert resolve_device("auto") == torch.device("cpu")
    for name, extra in (("default", []), ("auto", ["--device", "auto"])):
        assert main(["simulate", "double_well", "-n", "5", "--stride", "10", "--platform", "Reference", *extra,
                     "-o", str(tmp_path / f"{name}.h5")]) == 0
        assert main(["sample", str(files["model"]), "-n", "32", *extra, "-o", str(tmp_path / f"{name}.npz")]) == 0
    a, b = (mdtraj.load(str(tmp_path / f"{n}.h5")) for n in ("default", "auto"))
    assert np.array_equal(a.xyz, b.xyz)
    with np.load(tmp_path / "default.npz") as s0, np.load(tmp_path / "auto.npz") as s1:
        assert np.array_equal(s0["positions"], s1["positions"])


def test_simulate_refuses_a_bad_device_before_any_md(tmp_path):
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        openmm_bg.simulate(load("double_well"), n_frames=2, stride=2, device="gpu", output=tmp_path / "md.h5")
    assert _outputs(tmp_path) == []


def test_simulate_with_device_cpu_is_the_default_bit_for_bit():
    dw = load("double_well")
    runs = [openmm_bg.simulate(dw, n_frames=4, stride=5, seed=2, platform="Reference", progress=False, **extra).xyz
            for extra in ({}, {"device": "cpu"}, {"device": torch.device("cpu")})]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


@cuda
def test_simulate_on_cuda_uses_the_cuda_platform_and_refuses_another(tmp_path):
    dw = load("double_well")
    traj = openmm_bg.simulate(dw, n_frames=3, stride=5, device="cuda", progress=False)
    assert traj.xyz.shape == (3, 1, 3) and np.isfinite(traj.xyz).all()
    with pytest.raises(ValueError, match="drop one of them"):
        openmm_bg.simulate(dw, n_frames=3, stride=5, device="cuda", platform="Reference")


@cuda
def test_train_sample_free_energy_on_cuda(files, tmp_path):
    for command, argv in _commands(files, "cuda", tmp_path).items():
        assert main(argv) == 0, command
    gen = openmm_bg.BoltzmannGenerator.load(tmp_path / "m.bg", device="cuda")
    assert gen.device.type == "cuda" and gen.energy.platform_name == "CUDA"
