"""The ``device=`` plumbing (issue 15, GPU): one checked choice that flows from the generator to the
energy backends. CPU tests cover the checks and that ``device="cpu"`` is the default path, bit for bit;
the CUDA tests skip where torch sees no GPU."""

import pytest
import torch

from openmm_bg.energy import OpenMMEnergy, available_platforms, energy_for
from openmm_bg.energy.devices import openmm_platform_for, resolve_device
from openmm_bg.model.generator import BoltzmannGenerator
from openmm_bg.systems import load

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch")


@pytest.fixture(scope="module")
def ala():
    return load("alanine_dipeptide")


def _configurations(system, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(system.positions, dtype=torch.float64)[None]
    return x + 0.01 * torch.randn((n, system.n_atoms, 3), generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu")])
def test_cpu_spellings_resolve_to_the_cpu(device):
    assert resolve_device(device) == torch.device("cpu")
    assert openmm_platform_for(resolve_device(device)) is None


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x", "", "meta"])
def test_bad_device_strings_are_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match=r"device must be 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(bad)


def test_a_device_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="device must be a string or torch.device"):
        resolve_device(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_a_gpu_is_refused_naming_the_fix(device):
    with pytest.raises(ValueError, match=r"torch sees no CUDA GPU here.*use device='cpu'"):
        resolve_device(device)


@cuda
def test_a_cuda_index_beyond_the_visible_gpus_is_refused():
    n = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    with pytest.raises(ValueError, match=f"only {n} CUDA device"):
        resolve_device(f"cuda:{n}")


def test_openmm_energy_with_an_explicit_cpu_device_is_the_default_bit_for_bit(ala):
    x = _configurations(ala)
    default = OpenMMEnergy(ala, platform="Reference")
    explicit = OpenMMEnergy(ala, platform="Reference", device="cpu")
    assert explicit.device == torch.device("cpu") and explicit.platform_name == "Reference"
    u0, f0 = default.evaluate(x)
    u1, f1 = explicit.evaluate(x)
    assert torch.equal(u0, u1) and torch.equal(f0, f1)


def test_torch_backend_with_an_explicit_cpu_device_is_the_default_bit_for_bit(ala):
    x = _configurations(ala)
    u0, f0 = OpenMMEnergy(ala, backend="torch").evaluate(x)
    u1, f1 = OpenMMEnergy(ala, backend="torch", device="cpu").evaluate(x)
    assert torch.equal(u0, u1) and torch.equal(f0, f1)


@pytest.mark.parametrize("backend", ["openmm", "torch"])
def test_openmm_energy_refuses_a_bad_device_before_building(ala, backend):
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        OpenMMEnergy(ala, platform="Reference", backend=backend, device="gpu")


def test_energy_service_shares_the_default_energy_for_device_cpu(ala):
    assert energy_for(ala, platform="Reference", device="cpu") is energy_for(ala, platform="Reference")
    with pytest.raises(ValueError, match="device must be"):
        energy_for(ala, platform="Reference", device="gpu")


def test_generator_build_and_load_refuse_a_bad_device_before_any_work(dw, tmp_path):
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        BoltzmannGenerator.build(dw, data=None, device="gpu")  # data is never looked at
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        BoltzmannGenerator.load(tmp_path / "missing.bg", dw, device="gpu")  # the file is never opened


def test_generator_on_the_cpu_uses_the_shared_default_energy(dw, dw_data):
    gen = BoltzmannGenerator.build(dw, dw_data, n_blocks=1, hidden=(8,), seed=0, device="cpu")
    assert gen.device == torch.device("cpu")
    assert gen.energy is energy_for(dw)


@cuda
def test_torch_backend_on_cuda_matches_reference(ala):
    x = _configurations(ala)
    u_ref, f_ref = OpenMMEnergy(ala, platform="Reference").evaluate(x)
    energy = OpenMMEnergy(ala, backend="torch", device="cuda")
    u, f = energy.evaluate(x.cuda())
    assert u.device.type == "cuda"
    assert torch.allclose(u.cpu(), u_ref, rtol=1e-5) and torch.allclose(f.cpu(), f_ref, rtol=1e-5, atol=1e-3)


@cuda
@pytest.mark.skipif("CUDA" not in available_platforms(), reason="needs OpenMM's CUDA platform")
def test_openmm_backend_on_cuda_uses_the_cuda_platform(ala):
    x = _configurations(ala)
    u_ref, _ = OpenMMEnergy(ala, platform="Reference").evaluate(x)
    energy = OpenMMEnergy(ala, device="cuda")
    assert energy.platform_name == "CUDA" and "DeviceIndex" in energy.properties
    assert torch.allclose(energy.evaluate(x)[0], u_ref, rtol=1e-5)


@cuda
def test_generator_on_cuda_samples_with_energies_on_the_same_device(dw, dw_data):
    gen = BoltzmannGenerator.build(dw, dw_data, n_blocks=1, hidden=(8,), seed=0, device="cuda",
                                   energy=OpenMMEnergy(dw, backend="torch", device="cuda"))
    assert gen.device.type == "cuda" and gen.energy.device.type == "cuda"
    samples = gen.sample(64, seed=0)
    assert samples.log_weights.shape == (64,) and bool(torch.isfinite(torch.as_tensor(samples.log_weights)).any())
