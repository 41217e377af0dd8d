"""Bad input to the model layer (issue 17): bad temperatures, sizes, counts and seeds of
`BoltzmannGenerator`, and damaged or malformed model files. Every case is one `ValueError` naming the
argument (or the file) and what is allowed, raised before any work; never a hang, a traceback from deep
inside, or garbage samples."""

import hashlib
import io
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_energy_workers import time_limit  # fail instead of hanging (SIGALRM)

from openmm_bg import BoltzmannGenerator
from openmm_bg.model import FORMAT_VERSION, read_model_file
from openmm_bg.model.fileformat import write_model_file

BAD_TEMPERATURES = [math.nan, 0.0, -5.0, math.inf, -math.inf, "300", True]


# ---------------------------------------------------------------------------------- 1. temperatures
@pytest.mark.parametrize("temperature", BAD_TEMPERATURES)
def test_bad_target_temperatures_are_refused(dw_gen, dw_data, temperature):
    """Was: inf accepted (samples "at inf K"), NaN reported as "must be positive"."""
    gen = dw_gen
    x = dw_data.xyz[:3]
    z = torch.zeros(2, gen.n_dof)
    calls = [lambda: gen.sample(5, temperature=temperature), lambda: gen.log_prob(x, temperature=temperature),
             lambda: gen.log_weights(x, temperature=temperature),
             lambda: gen.reduced_energy(x, temperature=temperature),
             lambda: gen.propose(3, temperature=temperature), lambda: gen.sample_latent(3, temperature=temperature),
             lambda: gen.log_weight_latent(z, temperature=temperature)]
    for call in calls:
        with pytest.raises(ValueError, match="temperature must be a positive, finite temperature in K"):
            call()


@pytest.mark.parametrize("temperature", BAD_TEMPERATURES)
def test_bad_training_temperature_is_refused(dw_gen, temperature):
    g = dw_gen
    with pytest.raises(ValueError, match="training_temperature must be a positive, finite temperature in K"):
        BoltzmannGenerator(g.system, g.transform, g.standardize, g.flow, training_temperature=temperature)


def test_good_temperatures_still_work(dw_gen, dw_data):
    s = dw_gen.sample(20, temperature=np.float32(350.0), seed=0)
    assert s.temperature == 350.0 and bool(torch.isfinite(dw_gen.log_prob(dw_data.xyz[:2], temperature=350)).all())


# ---------------------------------------------------------------------------------- 2. sizes, counts, seeds
@pytest.mark.parametrize("batch_size", [0, -3, 1.5, "64", None, True])
def test_sample_refuses_a_bad_batch_size_at_once(dw_gen, batch_size):
    """Was: ``gen.sample(10, batch_size=0)`` looped forever."""
    with time_limit(20), pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        dw_gen.sample(10, batch_size=batch_size)


@pytest.mark.parametrize("n", [0, -1, 2.5, "10", None, True])
def test_sample_refuses_a_bad_count(dw_gen, n):
    with time_limit(20), pytest.raises(ValueError, match="n must be an integer >= 1"):
        dw_gen.sample(n)


@pytest.mark.parametrize("seed", [-1, 2.5, "0", 2**64, True])
def test_sample_refuses_a_bad_seed(dw_gen, seed):
    """Was: 2.5 silently truncated to 2, "0" and 2**64 failed inside torch."""
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        dw_gen.sample(5, seed=seed)


@pytest.mark.parametrize("n", [-1, 2.5, "3", True])
def test_propose_and_sample_latent_refuse_a_bad_count(dw_gen, n):
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        dw_gen.propose(n)
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        dw_gen.sample_latent(n)


def test_counts_given_as_integral_floats_still_work(dw_gen):
    assert len(dw_gen.sample(1e1, batch_size=4.0, seed=3.0)) == 10 and dw_gen.propose(0).x.shape[0] == 0


@pytest.mark.parametrize("options, message", [
    ({"n_blocks": 0}, "n_blocks must be an integer >= 1"),
    ({"n_blocks": 2.5}, "n_blocks must be an integer >= 1"),
    ({"hidden": ()}, "hidden must be a non-empty sequence"),
    ({"hidden": (16, 0)}, r"hidden\[1\] must be an integer >= 1"),
    ({"flow": "glow"}, "flow must be 'realnvp' or 'spline'"),
    ({"bins": 1, "flow": "spline"}, "bins must be an integer >= 2"),
    ({"seed": 0.5}, "seed must be an integer"),
    ({"dtype": torch.int32}, "dtype must be torch.float32 or torch.float64"),
    ({"n_bins": 8}, r"unknown flow option\(s\) \['n_bins'\]"),
])
def test_build_checks_its_arguments_before_reading_the_data(dw, options, message):
    """The data path does not exist: the argument error comes first (no work before the checks)."""
    with pytest.raises(ValueError, match=message):
        BoltzmannGenerator.build(dw, "/nonexistent/frames.dcd", **options)


# ---------------------------------------------------------------------------------- 3. model file integrity
def _envelope(path):
    return torch.load(path, weights_only=False)


def _payload_bytes(envelope) -> bytes:
    return envelope["payload"].numpy().tobytes()


def _payload_of(envelope) -> dict:
    return torch.load(io.BytesIO(_payload_bytes(envelope)), weights_only=False)


def assert_one_line_error(call, *parts, error=ValueError):
    """``call()`` raises ``error`` with a one-line message that holds every one of ``parts``."""
    with pytest.raises(error) as info:
        call()
    text = str(info.value)
    assert "\n" not in text, text
    for part in parts:
        assert str(part) in text, text
    return text


def _refused(path, system, *detail):
    """Loading ``path`` is the one-line "corrupt or truncated" ValueError naming the file (and ``detail``)."""
    return assert_one_line_error(lambda: BoltzmannGenerator.load(path, system), path, "corrupt or truncated", *detail)


def test_saved_files_are_format_4_with_a_checksum(dw_gen, tmp_path):
    path = dw_gen.save(tmp_path / "dw.bg")
    envelope = _envelope(path)
    assert envelope["format_version"] == FORMAT_VERSION == 4
    assert envelope["sha256"] == hashlib.sha256(_payload_bytes(envelope)).hexdigest()
    assert read_model_file(path)["format_version"] == 4
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_damaged_weight_bytes_are_refused(dw_gen, dw, tmp_path, where):
    """Was: a file with damaged bytes inside the weights loaded and sampled garbage."""
    path = dw_gen.save(tmp_path / "dw.bg")
    raw = bytearray(path.read_bytes())
    weight = max(dw_gen.flow.state_dict().values(), key=lambda t: t.numel())
    data = weight.detach().cpu().numpy().tobytes()
    start = raw.find(data)
    assert start >= 0, "the weights are stored verbatim in the file"
    offset = start + int(where * (len(data) - 1))
    raw[offset] ^= 0x40  # one bit of one weight
    path.write_bytes(bytes(raw))
    _refused(path, dw, "checksum mismatch")


@pytest.mark.parametrize("where", [0.001, 0.25, 0.5, 0.75, 0.999])
def test_damage_anywhere_in_the_payload_is_refused(dw_gen, dw, tmp_path, where):
    path = dw_gen.save(tmp_path / "dw.bg")
    raw = bytearray(path.read_bytes())
    payload = _payload_bytes(_envelope(path))
    start = raw.find(payload)
    assert start >= 0
    raw[start + int(where * len(payload))] ^= 0xFF
    path.write_bytes(bytes(raw))
    _refused(path, dw, "checksum mismatch")


def test_a_changed_weight_under_the_old_checksum_is_refused(dw_gen, dw, tmp_path):
    path = dw_gen.save(tmp_path / "dw.bg")
    envelope = _envelope(path)
    payload = _payload_of(envelope)
    name = next(iter(payload["flow_state"]))
    payload["flow_state"][name] = payload["flow_state"][name] + 1e-3
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    envelope["payload"] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)  # the old sha256
    torch.save(envelope, path)
    _refused(path, dw, "checksum mismatch")


@pytest.mark.parametrize("cut", [0.2, 0.6, 0.95])
def test_truncated_files_are_refused(dw_gen, dw, tmp_path, cut):
    path = dw_gen.save(tmp_path / "dw.bg")
    raw = path.read_bytes()
    path.write_bytes(raw[:int(cut * len(raw))])
    _refused(path, dw)


def _config_without_flow(p):
    del p["config"]["flow"]


def _drop(key):
    def change(p):
        del p[key]
    return change


def _set(key, value):
    def change(p):
        p[key] = value
    return change


def _set_in(key, inner, value):
    def change(p):
        p[key][inner] = value
    return change


MALFORMED = [
    ("config-without-flow", _config_without_flow, "config has no 'flow'"),
    ("config-not-a-dict", _set("config", ["realnvp", 2]), "config must be a dict"),
    ("n_blocks-a-string", _set_in("config", "n_blocks", "2"), "config: n_blocks must be an integer >= 1"),
    ("hidden-empty", _set_in("config", "hidden", []), "config: hidden must be a non-empty sequence"),
    ("flow-unknown", _set_in("config", "flow", "glow"), "config: kind must be 'realnvp' or 'spline'"),
    ("dtype-unknown", _set_in("config", "dtype", "float16"), "config['dtype'] must be 'float32' or 'float64'"),
    ("flow-options-not-a-dict", _set_in("config", "flow_options", [1]), "config['flow_options'] must be a dict"),
    ("flow-option-unknown", _set_in("config", "flow_options", {"n_bins": 3}), "config: "),
    ("fingerprint-not-a-dict", _set("fingerprint", "8fe2b1d3"), "fingerprint must be a dict"),
    ("fingerprint-without-atoms", lambda p: p["fingerprint"].pop("atoms"), "fingerprint['atoms'] must be str"),
    ("n_atoms-a-string", _set_in("fingerprint", "n_atoms", "1"), "fingerprint['n_atoms'] must be int"),
    ("no-transform", _drop("transform"), "missing entries ['transform']"),
    ("transform-not-a-module", _set("transform", {"n_dof": 2}), "transform must be a coordinate transform"),
    ("standardize-wrong", _set("standardize", None), "standardize must be a Standardize module"),
    ("domain-wrong", _set("flow_domain", "real"), "flow_domain must be a Domain"),
    ("weights-not-tensors", _set("flow_state", {"w": [1.0, 2.0]}), "flow_state must map parameter names to tensors"),
    ("weights-missing", _drop("flow_state"), "missing entries ['flow_state']"),
    ("temperature-a-string", _set("training_temperature", "300"), "training_temperature must be a positive number"),
    ("temperature-negative", _set("training_temperature", -300.0), "training_temperature must be a positive number"),
    ("system-name-a-number", _set("system_name", 5), "system_name must be a string"),
    ("extra-a-list", _set("extra", ["note"]), "extra must be a dict"),
]


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("name, change, detail", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_metadata_is_one_corrupt_line(dw_gen, dw, tmp_path, version, name, change, detail):
    """Was: KeyError / TypeError / AttributeError tracebacks from inside `load`."""
    source = dw_gen.save(tmp_path / "good.bg")
    payload = _payload_of(_envelope(source))
    change(payload)
    path = tmp_path / f"{name}.bg"
    if version == 3:
        write_model_file(path, payload)  # a correct checksum of malformed contents
    else:
        payload["format_version"] = 2
        torch.save(payload, path)
    _refused(path, dw, detail)


@pytest.mark.parametrize("bad", ["3", 3.0, True, 0, -1, None])
@pytest.mark.parametrize("version", [2, 3])
def test_a_bad_format_version_is_one_corrupt_line(dw_gen, dw, tmp_path, bad, version):
    source = dw_gen.save(tmp_path / "good.bg")
    envelope = _envelope(source)
    if version == 3:
        envelope["format_version"] = bad
        torch.save(envelope, tmp_path / "bad.bg")
    else:
        payload = _payload_of(envelope)
        payload["format_version"] = bad
        torch.save(payload, tmp_path / "bad.bg")
    _refused(tmp_path / "bad.bg", dw, "format_version must be an integer >= 1")


def test_an_envelope_without_its_payload_is_refused(dw_gen, dw, tmp_path):
    envelope = _envelope(dw_gen.save(tmp_path / "good.bg"))
    del envelope["payload"]
    torch.save(envelope, tmp_path / "bad.bg")
    _refused(tmp_path / "bad.bg", dw, "no payload bytes")


def test_files_of_formats_1_and_2_load_with_a_quiet_note(dw_gen, dw, tmp_path, caplog):
    payload = _payload_of(_envelope(dw_gen.save(tmp_path / "good.bg")))
    payload["format_version"] = 2
    torch.save(payload, tmp_path / "v2.bg")
    del payload["training_temperature"]
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "v1.bg")
    for version in (1, 2):
        caplog.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: a note in the log only
            with caplog.at_level(logging.INFO, logger="openmm_bg.model.fileformat"):
                gen = BoltzmannGenerator.load(tmp_path / f"v{version}.bg", dw)
        assert f"format {version} carries no checksum" in caplog.text
        assert all(r.levelno == logging.INFO for r in caplog.records)
        a, b = gen.sample(50, seed=1), dw_gen.sample(50, seed=1)
        np.testing.assert_array_equal(a.positions, b.positions)


def test_the_shipped_demo_model_of_format_1_loads_with_a_note(caplog):
    from openmm_bg.systems import load

    path = Path(__file__).resolve().parents[1] / "systems" / "models" / "alanine_dipeptide_vacuum.bg"
    with caplog.at_level(logging.INFO, logger="openmm_bg.model.fileformat"):
        payload = read_model_file(path)
    assert payload["format_version"] == 1 and "format 1 carries no checksum" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen = BoltzmannGenerator.load(path, load("alanine_dipeptide"))
    assert gen.training_temperature == 300.0


def test_a_failed_save_leaves_the_old_file_and_the_metadata(dw_gen, dw, tmp_path):
    path = dw_gen.save(tmp_path / "dw.bg", extra={"note": "first"})
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails with an error pickle chooses
        dw_gen.save(path, extra={"callback": lambda: 0})
    assert path.read_bytes() == before and dw_gen.extra == {"note": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dw.bg"]
    assert BoltzmannGenerator.load(path, dw).extra == {"note": "first"}
