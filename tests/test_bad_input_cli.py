"""Bad command lines: one ``openmm-bg: error:`` line on stderr, exit code 2, no traceback, nothing written.

Every case runs the installed ``openmm-bg`` console script in a subprocess (with this tree first on
``PYTHONPATH``); the cases run a few at a time in one module-scoped fixture so the file stays fast.
"""

import os
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _entry_point() -> list[str]:
    script = Path(sysconfig.get_path("scripts")) / "openmm-bg"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "openmm_bg.apps.cli"]


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny double-well data set and model (trained in-process), and a scratch folder."""
    import openmm_bg
    from openmm_bg.apps.cli import main
    from openmm_bg.systems import load

    root = tmp_path_factory.mktemp("bad_cli")
    data, model = root / "md.h5", root / "model.bg"
    for path, seed in ((data, 0), (root / "md2.h5", 1)):
        openmm_bg.simulate(load("double_well"), n_frames=60, stride=10, seed=seed, platform="Reference",
                           progress=False).save(str(path))
    config = root / "stages.toml"
    config.write_text("[[stage]]\nsteps = 2\nbatch_size = 16\n")
    assert main(["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "1",
                 "--hidden", "8", "-o", str(model)]) == 0
    return {"root": root, "data": data, "data2": root / "md2.h5", "model": model, "config": config,
            "model_bytes": model.read_bytes()}


TRAIN = ["train", "double_well", "--config", "{config}", "--n-blocks", "1"]

# (id, argv with {data} {model} {config} {out} placeholders, words the error line must contain,
#  paths under {out} that must not exist afterwards)
CASES = [
    # 1. a temperature of 0 (or nan, inf, negative) is refused, never read as "not given"
    ("simulate-T0", ["simulate", "double_well", "-n", "2", "--temperature", "0", "-o", "{out}/md.h5"],
     ["--temperature", "positive, finite temperature in K, got 0"], ["md.h5"]),
    ("simulate-Tneg", ["simulate", "double_well", "-n", "2", "--temperature", "-300", "-o", "{out}/md.h5"],
     ["--temperature", "got -300"], ["md.h5"]),
    ("simulate-Tnan", ["simulate", "double_well", "-n", "2", "--temperature", "nan", "-o", "{out}/md.h5"],
     ["--temperature", "got nan"], ["md.h5"]),
    ("simulate-option-T0", ["simulate", "double_well", "-n", "2", "--option", "temperature=0", "-o",
                            "{out}/md.h5"], ["temperature must be a positive, finite temperature in K"], ["md.h5"]),
    ("train-T0", ["train", "double_well", "--data", "{data}", "--config", "{config}", "--temperature", "0",
                  "-o", "{out}/m.bg"], ["--temperature", "got 0"], ["m.bg"]),
    ("sample-T0", ["sample", "{model}", "-n", "10", "--temperature", "0", "-o", "{out}/s.npz"],
     ["--temperature", "got 0"], ["s.npz"]),
    ("sample-Tinf", ["sample", "{model}", "-n", "10", "--temperature", "inf", "-o", "{out}/s.npz"],
     ["--temperature", "got inf"], ["s.npz"]),
    ("free-energy-T0", ["free-energy", "{model}", "--states", "left,right", "-n", "10", "--temperature", "0",
                        "-o", "{out}/fe"], ["--temperature", "got 0"], ["fe"]),
    # 3. rerunning train with other settings refuses the other run's checkpoint (and leaves its model alone)
    ("train-other-data", [*TRAIN, "--data", "{data2}", "--hidden", "8", "-o", "{model}"],
     ["cannot resume from", "different training data", "--restart"], []),
    ("train-other-hidden", [*TRAIN, "--data", "{data}", "--hidden", "16", "-o", "{model}"],
     ["cannot resume from", "different hidden", "--restart"], []),
    ("train-other-seed", [*TRAIN, "--data", "{data}", "--hidden", "8", "--seed", "3", "-o", "{model}"],
     ["cannot resume from", "build seed", "--restart"], []),
    ("train-other-temperature", [*TRAIN, "--data", "{data}", "--hidden", "8", "--temperature", "250", "-o",
                                 "{model}"], ["cannot resume from", "different", "temperature", "--restart"], []),
    ("train-other-stages", [*TRAIN[:2], "--steps-scale", "0.001", "--n-blocks", "1", "--data", "{data}",
                            "--hidden", "8", "-o", "{model}"], ["cannot resume from", "different stages"], []),
]


@pytest.fixture(scope="module")
def results(files):
    def run(case):
        name, argv, _, _ = case
        out = files["root"] / name
        out.mkdir()
        subs = {k: str(v) for k, v in files.items() if isinstance(v, Path)} | {"out": str(out)}
        argv = [a.format(**subs) for a in argv]
        proc = subprocess.run([*_entry_point(), *argv], capture_output=True, text=True, env=_env(),
                              cwd=out, timeout=300)
        return name, (proc, out)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize(("name", "words", "absent"), [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line_is_one_error_line(results, name, words, absent):
    proc, out = results[name]
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("openmm-bg: error: ")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    for path in absent:
        assert not (out / path).exists(), f"{path} was written although the command failed"


def test_refused_runs_leave_the_trained_model_alone(results, files):
    assert files["model"].read_bytes() == files["model_bytes"]
