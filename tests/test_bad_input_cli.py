"""Bad command lines: one ``openmm-bg: error:`` line on stderr, exit code 2, no traceback, nothing written.

Every case runs through ``main`` in-process (fast); a representative subset (one or more per
command and per kind of check) also runs the installed ``openmm-bg`` console script in a
subprocess, with this tree first on ``PYTHONPATH``, a few at a time in one module-scoped fixture.
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
    (root / "negative_steps.toml").write_text('[[stage]]\nsteps = 2\n\n[[stage]]\nname = "kl"\nsteps = -5\nkl = 1.0\n')
    (root / "rc_stage.toml").write_text("[[stage]]\nsteps = 2\nrc = 1.0\n")
    assert main(["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "1",
                 "--hidden", "8", "-o", str(model)]) == 0
    return {"root": root, "data": data, "data2": root / "md2.h5", "model": model, "config": config,
            "negative_steps": root / "negative_steps.toml", "rc_stage": root / "rc_stage.toml",
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
    # 4. sizes, counts and locations are checked before any work (at parse time where argparse can)
    ("threads-0", ["--threads", "0", "systems"], ["argument --threads: must be an integer >= 1, got 0"], []),
    ("threads-negative", ["--threads", "-2", "systems"], ["argument --threads: must be an integer >= 1, got -2"],
     []),
    ("train-n-blocks-0", [*TRAIN, "--data", "{data}", "--n-blocks", "0", "-o", "m.bg"],
     ["argument --n-blocks: must be an integer >= 1, got 0"], ["m.bg"]),
    ("train-hidden-0", [*TRAIN, "--data", "{data}", "--hidden", "64", "0", "-o", "m.bg"],
     ["argument --hidden: must be an integer >= 1, got 0"], ["m.bg"]),
    ("train-checkpoint-every-0", [*TRAIN, "--data", "{data}", "--checkpoint-every", "0", "-o", "m.bg"],
     ["argument --checkpoint-every: must be an integer >= 1, got 0"], ["m.bg"]),
    ("train-steps-scale-0", ["train", "double_well", "--data", "{data}", "--steps-scale", "0", "-o", "m.bg"],
     ["argument --steps-scale: must be positive and finite, got 0"], ["m.bg"]),
    ("train-seed-negative", [*TRAIN, "--data", "{data}", "--seed", "-1", "-o", "m.bg"],
     ["argument --seed: must be an integer >= 0, got -1"], ["m.bg"]),
    ("train-toml-negative-steps", ["train", "double_well", "--data", "{data}", "--config", "{negative_steps}",
                                   "-o", "m.bg"], ["stage 2 ('kl'): steps must be an integer >= 1, got -5"],
     ["m.bg", "m.bg.ckpt", "m_training.csv"]),
    ("train-rc-unknown", [*TRAIN, "--data", "{data}", "--rc", "phi", "-o", "m.bg"],
     ["has no reaction coordinate 'phi'", "x1"], ["m.bg", "m.bg.ckpt"]),
    ("train-rc-stage-without-rc", ["train", "double_well", "--data", "{data}", "--config", "{rc_stage}", "-o",
                                   "m.bg"], ["RC weight but no reaction coordinate"], ["m.bg", "m.bg.ckpt"]),
    ("train-output-is-a-folder", [*TRAIN, "--data", "{data}", "-o", "{out}"], ["is a folder; give a file name"],
     []),
    ("train-output-folder-missing", [*TRAIN, "--data", "{data}", "-o", "{out}/nope/m.bg"],
     ["/nope' does not exist; create it first"], ["nope"]),
    ("train-output-not-writable", [*TRAIN, "--data", "{data}", "-o", "/sys/m.bg"],
     ["folder '/sys' is not writable"], []),
    ("train-checkpoint-not-writable", [*TRAIN, "--data", "{data}", "--checkpoint", "/sys/m.ckpt", "-o", "m.bg"],
     ["--checkpoint folder '/sys' is not writable"], ["m.bg"]),
    ("simulate-timestep-negative", ["simulate", "double_well", "--timestep", "-0.001", "-o", "md.h5"],
     ["argument --timestep: must be positive and finite (ps), got -0.001"], ["md.h5"]),
    ("simulate-friction-negative", ["simulate", "double_well", "--friction", "-1", "-o", "md.h5"],
     ["argument --friction: must be >= 0 and finite (1/ps), got -1"], ["md.h5"]),
    ("simulate-output-not-writable", ["simulate", "double_well", "-n", "2", "-o", "/sys/md.h5"],
     ["folder '/sys' is not writable"], []),
    ("sample-trajectory-suffix", ["sample", "{model}", "-n", "10", "-o", "{out}/s.npz", "--trajectory",
                                  "{out}/t.txt"], ["--trajectory", "use one of the suffixes"], ["s.npz"]),
    ("sample-n-0", ["sample", "{model}", "-n", "0", "-o", "s.npz"], ["argument -n: must be an integer >= 1, got 0"],
     ["s.npz"]),
    ("sample-seed-negative", ["sample", "{model}", "--seed", "-4", "-o", "s.npz"],
     ["argument --seed: must be an integer >= 0, got -4"], ["s.npz"]),
    ("free-energy-n-0", ["free-energy", "{model}", "--states", "left,right", "-n", "0", "-o", "fe"],
     ["argument -n: must be an integer >= 1, got 0"], ["fe"]),
    ("free-energy-bins-1", ["free-energy", "{model}", "--states", "left,right", "--bins", "1", "-o", "fe"],
     ["argument --bins: must be an integer >= 2, got 1"], ["fe"]),
    ("free-energy-bootstrap-0", ["free-energy", "{model}", "--states", "left,right", "--bootstrap", "0", "-o",
                                 "fe"], ["argument --bootstrap: must be an integer >= 2, got 0"], ["fe"]),
    ("free-energy-output-is-a-file", ["free-energy", "{model}", "--states", "left,right", "-n", "10", "-o",
                                      "{config}"], ["is not a folder; give a folder name"], []),
    ("free-energy-output-under-a-file", ["free-energy", "{model}", "--states", "left,right", "-n", "10", "-o",
                                         "{config}/fe"], ["is not a folder (its parent", "is a file)"], []),
    ("free-energy-output-not-writable", ["free-energy", "{model}", "--states", "left,right", "-n", "10", "-o",
                                         "/sys/fe"], ["folder '/sys' is not writable"], []),
    ("free-energy-unknown-profile", ["free-energy", "{model}", "--states", "left,right", "-n", "10", "--profile",
                                     "phi", "-o", "fe"], ["--profile", "no reaction coordinate 'phi'"], ["fe"]),
    ("free-energy-unknown-state", ["free-energy", "{model}", "--states", "left,C7ax", "-n", "10", "-o", "fe"],
     ["has no state 'C7ax'"], ["fe"]),
    ("demo-samples-0", ["demo", "--quick", "--samples", "0", "-o", "demo"],
     ["argument --samples: must be an integer >= 1, got 0"], ["demo"]),
    ("demo-output-is-a-file", ["demo", "--quick", "-o", "{config}"], ["is not a folder"], []),
    ("train-other-stages", [*TRAIN[:2], "--steps-scale", "0.001", "--n-blocks", "1", "--data", "{data}",
                            "--hidden", "8", "-o", "{model}"], ["cannot resume from", "different stages"], []),
]


#: cases also run through the console script in a subprocess
SUBPROCESS = {"simulate-T0", "sample-Tinf", "threads-0", "train-toml-negative-steps", "train-output-not-writable",
              "train-other-data", "train-other-hidden", "sample-n-0", "free-energy-bootstrap-0",
              "free-energy-output-is-a-file", "free-energy-unknown-profile", "demo-output-is-a-file"}
BY_NAME = {case[0]: case for case in CASES}


def _argv(name, files, out):
    subs = {k: str(v) for k, v in files.items() if isinstance(v, Path)} | {"out": str(out)}
    return [a.format(**subs) for a in BY_NAME[name][1]]


def _check(name, returncode, err, out):
    _, _, words, absent = BY_NAME[name]
    assert returncode == 2, (returncode, err[-2000:])
    assert "Traceback" not in err
    assert "%|" not in err, "a progress bar ran: the error came after work had started"
    lines = [line for line in err.splitlines() if line.startswith("openmm-bg: error: ")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    for path in absent:
        assert not (out / path).exists(), f"{path} was written although the command failed"


@pytest.fixture(scope="module")
def results(files):
    def run(name):
        out = files["root"] / f"sub-{name}"
        out.mkdir()
        proc = subprocess.run([*_entry_point(), *_argv(name, files, out)], capture_output=True, text=True,
                              env=_env(), cwd=out, timeout=300)
        return name, (proc, out)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, sorted(SUBPROCESS)))


@pytest.mark.parametrize("name", list(BY_NAME))
def test_bad_command_line_is_one_error_line(files, name, capsys, monkeypatch):
    from openmm_bg.apps.cli import main

    out = files["root"] / name
    out.mkdir()
    monkeypatch.chdir(out)
    capsys.readouterr()
    try:
        returncode = main(_argv(name, files, out))
    except SystemExit as stop:  # argparse
        returncode = stop.code
    _check(name, returncode, capsys.readouterr().err, out)


@pytest.mark.parametrize("name", sorted(SUBPROCESS))
def test_bad_command_line_of_the_console_script(results, name):
    proc, out = results[name]
    _check(name, proc.returncode, proc.stderr, out)


def test_refused_runs_leave_the_trained_model_alone(results, files):
    assert files["model"].read_bytes() == files["model_bytes"]


def test_results_are_written_atomically(tmp_path):
    """JSON results go through a temporary file and a rename: no temporary file is left, and an
    existing file is replaced whole."""
    from openmm_bg._output import write_text_atomic

    target = tmp_path / "free_energy.json"
    target.write_text("old")
    write_text_atomic(target, '{"new": 1}\n')
    assert target.read_text() == '{"new": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["free_energy.json"]
    with pytest.raises(TypeError):
        write_text_atomic(target, None)  # a failed write keeps the old file and leaves no temporary file
    assert target.read_text() == '{"new": 1}\n' and len(list(tmp_path.iterdir())) == 1
