"""``benchmarks/gpu_check.py`` (issue 15, GPU): the export step here and the device step dry-run on the
CPU in a process where OpenMM, openmmtools, mdtraj and pymbar cannot be imported (as on the lent GPU
machine); a wrong reference value makes the device step fail. The torch force field pickles as its
parameters, so that the payload stays small."""

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

#: Runs the device step with the packages the GPU machine lacks made unimportable.
DEVICE_STEP = """
import runpy, sys
for name in ("openmm", "openmmtools", "mdtraj", "pymbar"):
    sys.modules[name] = None  # import fails, as where they are not installed
sys.argv = ["gpu_check.py", "device", *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_payload")
    manifest = _script().export(out, ("alanine_dipeptide_obc1",), n_configs=2, seed=0, max_mib=48.0)
    return out, manifest


def _device_step(payload_dir: Path, report: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["--payload", str(payload_dir), "--device", "cpu", "--batch-sizes", "1", "3", "--repeats", "1",
            "--out", str(report), *extra]
    return subprocess.run([sys.executable, "-c", DEVICE_STEP.format(script=str(SCRIPT)), *args],
                          capture_output=True, text=True, timeout=300, cwd=str(payload_dir))


def test_export_writes_a_small_payload_with_reference_values(payload):
    out, manifest = payload
    entry = manifest["systems"]["alanine_dipeptide_obc1"]
    assert entry["n_atoms"] == 22 and "CustomGBForce" in entry["forces"]
    assert manifest["total_bytes"] < 1 * 2**20  # alanine alone; the three systems are ~3 MiB
    assert json.loads((out / "manifest.json").read_text()) == manifest
    data = torch.load(out / entry["file"], weights_only=False)
    assert data["positions"].shape == (2, 22, 3) and data["energies"].dtype == torch.float64
    assert data["forces"].shape == (2, 22, 3) and torch.isfinite(data["energies"]).all()


def test_device_step_runs_without_openmm_and_matches_reference(payload, tmp_path):
    out, _ = payload
    report_path = tmp_path / "report.json"
    run = _device_step(out, report_path)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["passed"] is True and report["device"] == "cpu"
    entry = report["systems"]["alanine_dipeptide_obc1"]
    check = entry["check"]["float64"]
    assert check["passed"] and check["max_relative_energy_error"] < 1e-5 and check["max_relative_force_error"] < 1e-5
    assert entry["check"]["float32"]["max_relative_energy_error"] < 1e-3
    for dtype in ("float64", "float32"):
        rows = entry["throughput"][dtype]
        assert [r["batch"] for r in rows] == [1, 3] and all(r["conf_per_s"] > 0 for r in rows)


def test_device_step_fails_on_a_wrong_reference(payload, tmp_path):
    out, manifest = payload
    bad = tmp_path / "bad_payload"
    bad.mkdir()
    name = manifest["systems"]["alanine_dipeptide_obc1"]["file"]
    data = torch.load(out / name, weights_only=False)
    data["energies"] = data["energies"] * (1 + 1e-4)  # 1e-4 relative: above the 1e-5 tolerance
    torch.save(data, bad / name)
    (bad / "manifest.json").write_text((out / "manifest.json").read_text())
    report_path = tmp_path / "report.json"
    run = _device_step(bad, report_path)
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and not report["systems"]["alanine_dipeptide_obc1"]["check"]["float64"]["passed"]


def test_device_step_refuses_a_bad_device(payload, tmp_path):
    out, _ = payload
    run = _device_step(out, tmp_path / "r.json", "--device", "gpu")
    assert run.returncode == 2 and "--device must be 'cpu', 'cuda' or 'cuda:N'" in run.stderr


def test_torch_forcefield_pickles_as_parameters_and_evaluates_the_same():
    from openmm_bg.energy.torchff import TorchForceField
    from openmm_bg.systems import load

    trp = load("trpzip2")
    ff = TorchForceField(trp.system)
    buf = io.BytesIO()
    torch.save(ff, buf)
    n_pairs = trp.n_atoms * (trp.n_atoms - 1) // 2
    assert buf.tell() < 40 * n_pairs  # the pair buffers alone would be > 100 bytes per pair
    buf.seek(0)
    copy = torch.load(buf, weights_only=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.as_tensor(trp.positions)[None] + 0.01 * torch.randn((2, trp.n_atoms, 3), generator=gen,
                                                                  dtype=torch.float64)
    e0, f0 = ff.energy_and_forces(x)
    e1, f1 = copy.energy_and_forces(x)
    assert torch.equal(e0, e1) and torch.equal(f0, f1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch")
def test_device_step_on_cuda(payload, tmp_path):
    out, _ = payload
    report_path = tmp_path / "report.json"
    run = _device_step(out, report_path, "--device", "cuda")
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(report_path.read_text())["passed"] is True
