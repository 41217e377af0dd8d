"""The ``openmm-bg`` command line.

Subcommands (``openmm-bg SUBCOMMAND --help`` explains every option with its unit)::

    openmm-bg systems                               # built-in systems, states, reference energies
    openmm-bg simulate alanine_dipeptide -n 2000 --stride 500 -o md.h5   # --resume after a kill
    openmm-bg simulate peptide:AAGA --torsion-starts 7 -n 1000 -o md.h5  # 8 starts, origins beside
    openmm-bg simulate trpzip2 --option constraints=hbonds --ns 1 --replica-exchange 300:450:6 -o tz.h5
    openmm-bg simulate trpzip2 --option constraints=hbonds --hydrogen-mass 1.5 --ns 1 -o tz.h5   # 4 fs steps
    openmm-bg train alanine_dipeptide --data md.h5 -o model.bg      # resumable (checkpoint beside -o)
    openmm-bg sample model.bg -n 100000 -o samples.npz
    openmm-bg sample model.bg -n 100000 --anneal -o annealed.npz   # exact, lighter-tailed weights
    openmm-bg free-energy model.bg --states C7eq,C7ax --profile phi -o results/
    openmm-bg demo                                  # the main job (alanine dipeptide, vacuum)
    torchrun --nproc_per_node=4 --no-python openmm-bg train ...   # data-parallel (see --shards)
    torchrun --nproc_per_node=4 --no-python openmm-bg sample model.bg -n 100000000 -o samples.npz
    openmm-bg merge-samples model.bg -o samples.npz samples.rank*of4.npz   # if rank 0 cannot see them all

A system is a built-in name (with ``--option key=value`` for its options, e.g. ``solvent=implicit``),
``peptide:SEQUENCE`` (one-letter codes, built offline: ``openmm_bg.systems.peptide``) or files:
``x.pdb`` with ``--forcefield``, ``x.prmtop``/``x.top``/``x.psf`` with ``--coordinates``.
Coordinates and states of any system: ``--coordinate NAME:EXPR``, ``--state NAME:CONDITION`` and
``--states FILE.toml`` (grammar in `openmm_bg.systems.state_files`), e.g.
``free-energy model.bg --state "ax:phi:2 in (0, 2.2)" --state "eq:phi:2 not in (0, 2.2)" --profile psi:2``;
every residue's ``phi_R``, ``psi_R`` and basins ``alphaR_R``, ``beta_R``, ``alphaL_R`` come for free.
``train`` ends with the coverage table of 10^4 draws; ``train``, ``sample`` and ``free-energy`` print an
``UNRELIABLE`` line when Pareto k >= 0.7 or a basin of the training data is lost.
Errors are one line with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from .. import _validation as check
from .._output import output_file, output_folder, write_text_atomic

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """An error reported to the user as one line (exit code 2)."""


def _checked(check_value, *extra):
    """An argparse ``type`` from an `openmm_bg._validation` check: number parsed, range checked."""

    def parse(text: str):
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            return check_value("value", value, *extra)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("value ")) from None

    parse.__name__ = check_value.__name__.replace("_", " ")  # argparse names it in some messages
    return parse


# ---------------------------------------------------------------------- systems
def _parse_options(pairs: list[str] | None) -> dict:
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CLIError(f"--option takes key=value, got {pair!r} (e.g. --option solvent=implicit)")
        key, value = pair.split("=", 1)
        if value.lower() in ("none", "null"):
            options[key] = None
        else:
            try:
                options[key] = float(value) if value.replace(".", "", 1).isdigit() else value
            except ValueError:
                options[key] = value
    return options


def system_spec(args: argparse.Namespace) -> dict:
    """How to rebuild the system: stored in model files so later commands need no options."""
    name = args.system
    temperature = getattr(args, "temperature", None)  # None: the system's own (0 is refused, not "not given")
    spec = {} if temperature is None else {"temperature": check.temperature_kelvin("--temperature", temperature)}
    if Path(name).suffix:
        spec.update(files={"structure": str(Path(name).resolve()),
                           "coordinates": str(Path(args.coordinates).resolve()) if args.coordinates else None,
                           "forcefield": args.forcefield, "parameters": args.parameters,
                           "implicit_solvent": args.implicit_solvent})
    else:
        spec.update(name=name, options=_parse_options(args.option))
    if getattr(args, "hydrogen_mass", None) is not None:
        spec["hydrogen_mass"] = args.hydrogen_mass
    return spec


def load_system(spec: dict):
    """A `MolecularSystem` from a spec written by `system_spec`.

    A ``"temperature"`` of None or no such key means the system's own; any other value must be a
    positive, finite temperature in K. A ``"hydrogen_mass"`` (dalton) repartitions the hydrogen masses.
    """
    import openmm_bg.systems as bgs

    temperature = spec.get("temperature")
    extra = {} if temperature is None else {"temperature": check.temperature_kelvin("temperature", temperature)}
    if spec.get("hydrogen_mass") is not None:
        extra["hydrogen_mass"] = spec["hydrogen_mass"]
    if "name" in spec:
        options = {**(spec.get("options") or {}), **extra}
        if options.get("temperature") is not None:  # also from --option temperature=...
            options["temperature"] = check.temperature_kelvin("temperature", options["temperature"])
        return bgs.load(spec["name"], **options)
    files = spec["files"]
    path = Path(files["structure"])
    if path.suffix.lower() == ".pdb":
        forcefield = files.get("forcefield") or ["amber14-all.xml"]
        return bgs.from_pdb(path, forcefield=forcefield, **extra)
    return bgs.from_files(path, files.get("coordinates"), parameters=files.get("parameters"),
                          implicit_solvent=files.get("implicit_solvent"), **extra)


def _hydrogen_mass(name: str, value) -> float:
    """``--hydrogen-mass`` checked (imported late: the parser is built without loading OpenMM)."""
    from ..systems.hydrogen_mass import check_hydrogen_mass

    return check_hydrogen_mass(value, name)


def _system_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("system", help="built-in system name (see 'openmm-bg systems'), peptide:SEQUENCE (e.g. "
                                  "peptide:AAGA) or a structure/topology file (.pdb, .prmtop, .top, .psf)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="option of a built-in system, e.g. solvent=implicit, constraints=hbonds (repeatable)")
    p.add_argument("--coordinates", help="coordinate file for a topology file (.inpcrd, .gro, .crd)")
    p.add_argument("--forcefield", nargs="+", help="OpenMM force-field XML files for a PDB "
                                                   "(default amber14-all.xml)")
    p.add_argument("--parameters", nargs="+", help="CHARMM parameter files (.prm, .rtf, .str)")
    p.add_argument("--implicit-solvent", help="implicit-solvent model for topology files: OBC1, OBC2, GBn, GBn2, HCT")
    p.add_argument("--temperature", type=_checked(check.temperature_kelvin),
                   help="temperature in K (default: the system's, 300 K)")
    p.add_argument("--hydrogen-mass", type=_checked(_hydrogen_mass), metavar="DALTON",
                   help="hydrogen mass repartitioning: every hydrogen gets this mass (e.g. 1.5), taken from its "
                        "bonded heavy atom; same energies and Boltzmann distribution, slower H motion, so MD with "
                        "--option constraints=hbonds runs at 4 fs (the default --timestep then)")


def _definition_arguments(p: argparse.ArgumentParser, states_files: bool = True) -> None:
    g = p.add_argument_group("coordinates and states of your molecule (grammar: openmm_bg.systems.state_files)")
    g.add_argument("--coordinate", action="append", metavar="NAME:EXPR",
                   help="define a coordinate, e.g. ends:distance:1/CA,4/CA (EXPR: phi:R, psi:R, omega:R, chi1:R, "
                        "dihedral:A,B,C,D, angle:A,B,C, distance:A,B with atoms INDEX (0-based) or RES/NAME, "
                        "rmsd:FILE[SELECTION]); repeatable")
    g.add_argument("--state", action="append", metavar="NAME:CONDITION",
                   help="define a state, e.g. 'C7ax:phi:2 in (0, 2.2)'; CONDITION: EXPR in (LOW, HIGH), EXPR not in "
                        "(LOW, HIGH), EXPR < X, EXPR > X joined by 'and'; rad or deg (60deg), nm; a dihedral's range "
                        "with LOW > HIGH wraps through +-pi; repeatable")
    if states_files:
        g.add_argument("--states", action="append", metavar="FILE.toml",
                       help="TOML file of [coordinates] and [states] (repeatable)")


def _defined(system, args: argparse.Namespace, files=None):
    """``system`` with the ``--coordinate``/``--state``/``--states`` definitions and every residue's backbone
    phi_R, psi_R and basins alphaR_R, beta_R, alphaL_R registered (all checked before any work)."""
    from openmm_bg.systems import define

    files = getattr(args, "states", None) if files is None else files
    return define(system, coordinates=args.coordinate or (), states=args.state or (), files=files or ())


def _coordinate_of(system, text: str, option: str):
    """A coordinate of ``system`` by name, or the coordinate of an expression (``--rc phi:2``)."""
    from openmm_bg.systems import coordinate

    try:
        return coordinate(system, text)
    except ValueError as err:
        raise CLIError(f"{option}: {err}") from None


def _device_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", metavar="cpu|cuda|cuda:K|auto",
                   help=f"where {what} run: cpu (default), cuda (the current GPU), cuda:K, or auto (a GPU where "
                        "torch and OpenMM both see one, else the CPU)")


def _device(args: argparse.Namespace):
    """The checked ``torch.device`` of ``--device`` (None when not given), before any work: a GPU needs torch
    to see it and OpenMM's CUDA platform for the energies (`openmm_bg.energy.devices`)."""
    if args.device is None:
        return None
    from openmm_bg.energy.devices import openmm_platform_for, resolve_device
    from openmm_bg.energy.platforms import available_platforms

    try:
        device = resolve_device(args.device, "--device")
    except ValueError as err:
        raise CLIError(str(err)) from None
    on_device = openmm_platform_for(device)
    if on_device is not None and on_device[0] not in available_platforms():
        raise CLIError(f"--device {args.device}: torch sees the GPU, but OpenMM has no {on_device[0]} platform here "
                       f"(available: {', '.join(available_platforms())}), so the energies cannot run on it; use "
                       "--device cpu (or auto), or install an OpenMM build with CUDA")
    if _rank().distributed:
        raise CLIError("--device: under torchrun every rank takes its own device (its local GPU with the nccl "
                       "backend, else the CPU); drop --device")
    return device


def _print_reliability(samples) -> None:
    """An 'unreliable' line when the weights are heavy-tailed or the coverage check fails."""
    reasons = samples.unreliable()
    if reasons:
        print(f"UNRELIABLE: {'; '.join(reasons)}: reweighted estimates from these samples cannot be trusted")


# ---------------------------------------------------------------------- commands
def _cmd_systems(args: argparse.Namespace) -> int:
    import openmm_bg.systems as bgs
    from openmm_bg.energy import energy_for

    names = [args.name] if args.name else bgs.names()
    for name in names:
        system = bgs.load(name)
        energy = energy_for(system, platform="Reference").reference_energy
        print(system.summary())
        coordinates = ", ".join(f"{k} ({v.unit})" for k, v in system.reaction_coordinates.items()) or "none"
        print(f"    {system.description}; coordinates: {coordinates}; reference energy {energy:.3f} kT")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    import openmm_bg
    from openmm_bg.md.partial import PartialRun
    from openmm_bg.md.simulation import OUTPUT_SUFFIXES

    _check_output(args.output, OUTPUT_SUFFIXES)
    device = _device(args)  # a GPU with another --platform: refused by simulate before any MD
    if device is not None and device.type != "cpu" and args.replica_exchange is not None:
        raise CLIError("--device with --replica-exchange: openmmtools places the replicas itself; use "
                       "--platform CUDA instead")
    if args.all_temperatures and args.replica_exchange is None:
        raise CLIError("--all-temperatures needs --replica-exchange LOW:HIGH:N")
    system = load_system(system_spec(args))
    args.frames = _frames_of(args, system)
    if args.replica_exchange is not None:
        if args.starts or args.torsion_starts:
            raise CLIError("--replica-exchange starts from the system's structure; drop --starts/--torsion-starts")
        return _cmd_replica_exchange(args, system)
    if args.starts or args.torsion_starts:
        return _simulate_starts(args, system, device)
    partial = PartialRun(args.output)
    if args.resume and partial.exists():
        print(f"continuing: {partial.describe()}")
    try:
        traj = openmm_bg.simulate(system, n_frames=args.frames, stride=args.stride, seed=args.seed,
                                  timestep=args.timestep, friction=args.friction, output=args.output,
                                  equilibration_steps=args.equilibration, minimize=args.minimize,
                                  platform=args.platform, resume=args.resume, device=device)
    except (KeyboardInterrupt, RuntimeError) as err:  # frames so far are kept: say where and how to go on
        for note in getattr(err, "__notes__", []):
            print(f"openmm-bg: {note}", file=sys.stderr)
        raise
    print(f"wrote {traj.n_frames} frames ({traj.time[-1]:.1f} ps) of {system.name} to {args.output}")
    return 0


def _simulate_starts(args: argparse.Namespace, system, device=None) -> int:
    """``simulate --starts / --torsion-starts``: one run per start, merged, with the origins beside the output."""
    import numpy as np

    from openmm_bg.md.multistart import origins_path, simulate_starts, torsion_starts

    starts = [str(p) for p in args.starts or []] or [system.positions]
    if args.torsion_starts:
        starts = [*starts, torsion_starts(system, args.torsion_starts, seed=args.seed)]
    traj, origins = simulate_starts(system, starts, n_frames=args.frames, stride=args.stride, seed=args.seed,
                                    output=args.output, resume=args.resume, timestep=args.timestep,
                                    friction=args.friction, equilibration_steps=args.equilibration,
                                    minimize=args.minimize, platform=args.platform, device=device)
    print(f"wrote {traj.n_frames} frames of {system.name} from {len(np.unique(origins))} starts to {args.output}; "
          f"origins in {origins_path(args.output)}")
    return 0


def _frames_of(args: argparse.Namespace, system) -> int:
    """Frames to make: ``-n`` (default 1000), or ``--ns`` of simulated time over ``--stride`` steps."""
    if args.ns is None:
        return 1000 if args.frames is None else args.frames
    if args.frames is not None:
        raise CLIError("give either -n/--frames or --ns, not both")
    from openmm_bg.md import default_timestep

    dt = args.timestep or default_timestep(system)
    frames = round(args.ns * 1000.0 / (dt * args.stride))
    if frames < 1:
        raise CLIError(f"--ns {args.ns:g} is shorter than one frame ({args.stride} steps of {dt:g} ps); "
                       "give more ns or a smaller --stride")
    return frames


def _cmd_replica_exchange(args: argparse.Namespace, system) -> int:
    from openmm_bg.md import replica_exchange

    run = replica_exchange(system, n_frames=args.frames, stride=args.stride, temperatures=args.replica_exchange,
                           output=args.output, seed=args.seed, timestep=args.timestep, friction=args.friction,
                           equilibration_steps=args.equilibration, minimize=args.minimize, platform=args.platform,
                           resume=args.resume)
    ladder = ", ".join(f"{t:.0f}" for t in run.temperatures)
    acceptance = ", ".join(f"{a:.2f}" for a in run.acceptance)
    how = "read from the stored run " + run.storage.name if run.reused else "stored in " + run.storage.name
    print(f"replica exchange at {ladder} K ({how}); exchange acceptance between neighbours: {acceptance}")
    if args.all_temperatures:
        output = Path(args.output)
        for state, temperature in enumerate(run.temperatures[1:], start=1):
            path = output.with_name(f"{output.stem}_{temperature:.0f}K{output.suffix}")
            run.frames_at(state).save(str(path))
            print(f"wrote the {temperature:.1f} K frames to {path}")
    traj = run.trajectory
    print(f"wrote {traj.n_frames} frames ({traj.time[-1]:.1f} ps) of {system.name} at {run.temperatures[0]:g} K "
          f"to {args.output}")
    return 0


def _temperature_ladder(text: str):
    from openmm_bg.md.replica_exchange import parse_temperature_ladder

    try:
        return parse_temperature_ladder(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _check_output(path, suffixes, name: str = "output") -> None:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise CLIError(f"{name} {str(p)!r}: use one of the suffixes {', '.join(suffixes)}")
    output_file(name, p)  # a folder that exists and accepts files; not a folder itself


def _cmd_train(args: argparse.Namespace) -> int:
    import openmm_bg
    from openmm_bg.apps.plots import plot_history
    from openmm_bg.flows.builder import check_flow_arguments
    from openmm_bg.systems.trajectory import check_trajectory
    from openmm_bg.training import Trainer, default_stages, load_stages
    from openmm_bg.training.stages import adaptive_stages
    from openmm_bg.training.trainer import training_coordinate
    from openmm_bg.training.validation import data_origins, validation_split

    # everything that can be checked is checked before the model is built or trained
    stages = load_stages(args.config) if args.config else None
    if stages is None and args.recipe == "classic":
        stages = default_stages(args.steps_scale)
    output = output_file("-o/--output", args.output)
    checkpoint = output_file("--checkpoint", args.checkpoint or output.with_name(output.name + ".ckpt"))
    check_flow_arguments(kind=args.flow, n_blocks=args.n_blocks, hidden=args.hidden, seed=args.seed)
    device = _device(args)
    if not Path(args.data).is_file():
        raise CLIError(f"training data not found: {args.data!r}; make some with 'openmm-bg simulate'")
    spec = system_spec(args)
    system = _defined(load_system(spec), args)
    system.require_nonperiodic("openmm-bg train")
    rc = None if args.rc is None else _coordinate_of(system, args.rc, "--rc")
    training_coordinate(system, rc, stages or [])
    gen = openmm_bg.BoltzmannGenerator.build(system, args.data, flow=args.flow, n_blocks=args.n_blocks,
                                             hidden=tuple(args.hidden), seed=args.seed, device=device)
    if stages is None:  # the adaptive recipe: sizes from the degrees of freedom and the frames trained on
        frames = check_trajectory(system, args.data).xyz
        n_train = len(validation_split(system, frames, origins=data_origins(args.data),
                                       reference=gen.coverage_reference).train)
        stages = adaptive_stages(gen.n_dof, n_train, args.steps_scale)
    metrics = output.with_name(output.stem + "_training.csv")
    options = {"seed": args.seed, "rc": rc, "checkpoint": checkpoint, "checkpoint_every": args.checkpoint_every,
               "metrics": metrics}
    info = _rank()
    if args.shards is not None or info.distributed:  # data-parallel: fixed shards, one process per rank
        from openmm_bg.training import DistributedTrainer

        info = _join(args)
        _rank_resources(gen, info)
        trainer = DistributedTrainer(gen, args.data, stages, shards=args.shards or _default_shards(),
                                     timeout_s=args.dist_timeout, recipe=args.recipe, **options)
        if info.is_main:
            print(trainer.describe())
    else:
        trainer = Trainer(gen, args.data, stages, recipe=args.recipe, **options)
    if info.is_main and checkpoint.exists() and not args.restart:
        step = trainer.read_checkpoint(checkpoint)["step"]  # refuses a checkpoint of another run
        print(f"resuming from {checkpoint} at step {step} of {trainer.total_steps} (use --restart to start over)")
    elif info.is_main and checkpoint.exists():
        checkpoint.unlink()
    history = trainer.fit(resume=not args.restart)
    if info.is_main:  # rank 0 writes the model
        gen.save(output, extra={"system_spec": spec})
        plot = plot_history(history, output.with_name(output.stem + "_training.png"))
        last = history[-1]
        print(f"trained {len(history)} steps ({trainer.n_skipped} skipped, recipe {args.recipe}), final ML "
              f"{last['ml']:.3f}, KL {last['kl']:.3f} kT; model {output}, metrics {metrics}, curves {plot}")
        stopped = [f"{s.name} after {n} of {s.steps} steps" for s, n in zip(trainer.stages, trainer.stage_steps)
                   if n < s.steps]
        if trainer.split is not None:
            print(trainer.split.describe())
        if stopped:
            print(f"early stopping on held-out time blocks: {', '.join(stopped)}")
        check = gen.sample(args.coverage_samples, seed=args.seed)
        print(f"check on {len(check)} samples: {check.summary()}")
        _print_reliability(check)
    _leave(info)
    return 0


# ---------------------------------------------------------------------- several processes (torchrun)
def _rank():
    from openmm_bg.distributed import rank_info

    return rank_info()


def _default_shards() -> int:
    from openmm_bg.distributed import DEFAULT_SHARDS

    return DEFAULT_SHARDS


def _join(args: argparse.Namespace):
    """Join the job's process group (a no-op for one process), with the collective timeout of --dist-timeout."""
    from openmm_bg.distributed import check_shards, init_distributed, rank_info

    if args.shards is None and rank_info().world_size > _default_shards():
        raise CLIError(f"{rank_info().world_size} ranks need --shards (at least one shard per rank; "
                       f"default {_default_shards()})")
    check_shards(args.shards or _default_shards(), rank_info().world_size)  # before joining: every rank fails alike
    return init_distributed(args.dist_timeout)


def _rank_resources(gen, info) -> None:
    """Give a rank of a multi-rank job its device and energy (`openmm_bg.distributed.energy_options`)."""
    from openmm_bg.distributed import energy_options
    from openmm_bg.energy import energy_for

    if info.distributed:
        gen.to(info.device)
        gen.set_energy(energy_for(gen.system, **energy_options(info)))


def _leave(info) -> None:
    from openmm_bg.distributed import close_distributed

    if info.distributed:
        close_distributed()


def _distributed_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several processes (under torchrun or srun: one process per rank)")
    g.add_argument("--shards", type=_checked(check.positive_int),
                   help="cut every batch / the sample set into this many shards, each with its own random stream "
                        "(>= ranks; results depend on it, not on the number of ranks; default 8 under torchrun, "
                        "none on one process)")
    g.add_argument("--dist-timeout", type=_checked(check.positive, "s"), default=300.0,
                   help="seconds a collective waits for the other ranks before the job fails (default 300)")


def _load_model(path: str, device=None):
    """The generator of a model file with the system it was trained for (as ``train`` stored it): a
    built-in system is rebuilt by name, a system from files is the one stored in the model file
    (format 4 on; older files name the input files by path).

    A ``--temperature`` goes to ``sample(temperature=...)``, not into the system: the command line
    then draws exactly what the library draws for the same seed.
    """
    import openmm_bg
    from openmm_bg.model import read_model_file
    from openmm_bg.model.fileformat import stored_system

    payload = read_model_file(path)
    spec = payload.get("extra", {}).get("system_spec")
    if payload.get("system_record") is not None and (spec is None or "name" not in spec):
        return openmm_bg.BoltzmannGenerator.load(path, device=device)  # the system stored in the file
    if spec is None:
        raise CLIError(f"{path} does not say which system it belongs to (saved outside the CLI); load it "
                       "in Python with BoltzmannGenerator.load(path, system)")
    system = load_system(spec)  # built-in systems by name (with their coordinates); older files by path
    if payload.get("system_record") is not None:  # plus the coordinates and states given to train
        system = _with_stored_definitions(system, stored_system(payload, path))
    return openmm_bg.BoltzmannGenerator.load(path, system, device=device)


def _with_stored_definitions(system, stored):
    """A copy of ``system`` with the coordinates and states of ``stored`` that it lacks (``train --state``)."""
    import copy

    out = copy.copy(system)
    out.reaction_coordinates = {**stored.reaction_coordinates, **system.reaction_coordinates}
    out.states = {**stored.states, **system.states}
    return out


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _fraction(open_interval: bool):
    """An argparse ``type``: a number in [0, 1], or in (0, 1) with ``open_interval``."""
    where = "in (0, 1)" if open_interval else "in [0, 1]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {where}, got {text!r}") from None
        if not (0 < value < 1 if open_interval else 0 <= value <= 1):
            raise argparse.ArgumentTypeError(f"expected a number {where}, got {text!r}")
        return value

    parse.__name__ = "fraction"
    return parse


def _anneal_arguments(p: argparse.ArgumentParser) -> None:
    from openmm_bg.model.annealed import GENERATOR_DEFAULT as d  # the one default, shared with gen.sample

    g = p.add_argument_group("annealed sampling (exact weights, lighter tails; costs energy + force evaluations)",
                             "--anneal uses the defaults of gen.sample(n, anneal=True) "
                             "(openmm_bg.model.annealed.GENERATOR_DEFAULT); each option below overrides one field, "
                             "--seed seeds the run, and the samples' provenance records the fields changed")
    g.add_argument("--anneal", action="store_true", help="anneal the samples from the generator to the Boltzmann "
                                                         "distribution (SMC in the flow's latent space)")
    g.add_argument("--anneal-levels", type=_positive_int, metavar="K",
                   help=f"levels (adaptive: at most K; default {d.n_levels})")
    g.add_argument("--anneal-kernel", choices=["mala", "hmc"], help=f"MCMC kernel of every level (default {d.kernel})")
    g.add_argument("--anneal-steps", type=_positive_int, metavar="M",
                   help=f"kernel steps per level (default {d.mcmc_steps_per_level})")
    g.add_argument("--anneal-global", type=_non_negative_int, metavar="G",
                   help=f"proposals drawn from the generator's prior per level, after the kernel steps (global "
                        f"moves between basins, one energy evaluation each; default {d.independence_steps})")
    g.add_argument("--anneal-step-size", type=_positive_float, metavar="S",
                   help=f"kernel step size in latent units (adaptive: of the first level; default {d.step_size})")
    g.add_argument("--anneal-cess", type=_fraction(open_interval=True), metavar="C",
                   help=f"adaptive: conditional ESS / N of every level, in (0, 1); lower: fewer, larger levels "
                        f"(default {d.target_cess})")
    g.add_argument("--anneal-resample-threshold", type=_fraction(open_interval=False), metavar="R",
                   help=f"resample when ESS / N falls below R, in [0, 1]; 0 never resamples "
                        f"(default {d.resample_threshold})")
    g.add_argument("--anneal-fixed", action="store_true",
                   help="fixed schedule: K equally spaced levels, frozen step size (exactly unbiased normaliser; "
                        "default adaptive)")


_ANNEAL_OPTIONS = {"anneal_levels": "n_levels", "anneal_kernel": "kernel", "anneal_steps": "mcmc_steps_per_level",
                   "anneal_global": "independence_steps", "anneal_step_size": "step_size", "anneal_cess": "target_cess",
                   "anneal_resample_threshold": "resample_threshold"}


def _anneal_config(args: argparse.Namespace):
    """The `openmm_bg.sampling.AnnealConfig` of the ``--anneal*`` options (`GENERATOR_DEFAULT` with the
    given fields replaced), or None without ``--anneal``."""
    from openmm_bg.model.annealed import generator_anneal_config

    options = {field: getattr(args, name) for name, field in _ANNEAL_OPTIONS.items()}
    if not args.anneal:
        given = [f"--{name.replace('_', '-')}" for name in _ANNEAL_OPTIONS if getattr(args, name) is not None]
        given += ["--anneal-fixed"] if args.anneal_fixed else []
        if given:
            raise CLIError(f"{', '.join(given)} only apply with --anneal; add --anneal or drop them")
        return None
    if args.anneal_fixed and args.anneal_cess is not None:
        raise CLIError("--anneal-cess chooses adaptive levels; it does not apply with --anneal-fixed (drop one)")
    try:
        return generator_anneal_config(adaptive=False if args.anneal_fixed else None, **options)
    except ValueError as err:
        raise CLIError(f"--anneal options: {err}") from None


def _draw(gen, args: argparse.Namespace):
    """Plain or (with ``--anneal``) annealed samples of a model, with a progress bar."""
    config = _anneal_config(args)
    samples = gen.sample(args.n, temperature=args.temperature, seed=args.seed, progress=True, anneal=config)
    if config is not None:
        p = samples.provenance
        changed = ", ".join(f"{k}={v}" for k, v in p["anneal_overrides"].items()) or "none"
        print(f"annealed {len(samples)} particles in {p['n_levels']} levels: {p['n_energy_evaluations']} energy "
              f"evaluations ({p['n_energy_force_evaluations']} with forces), {p['n_distinct_ancestors']} distinct "
              f"ancestors; settings changed from the default: {changed}")
    return samples


def _cmd_sample(args: argparse.Namespace) -> int:
    gen = _load_model(args.model, _device(args))
    from openmm_bg.md.simulation import OUTPUT_SUFFIXES

    _check_output(args.output, (".npz",))
    if args.trajectory:
        _check_output(args.trajectory, OUTPUT_SUFFIXES, "--trajectory")
    info = _rank()
    if args.shards is not None or info.distributed:
        return _sample_sharded(gen, args)
    samples = _draw(gen, args)
    path = samples.save(args.output)
    print(samples.summary())
    _print_reliability(samples)
    if args.trajectory:
        traj = samples.resample(seed=args.seed)
        traj.save(args.trajectory)
        print(f"wrote {traj.n_frames} resampled (unweighted) frames to {args.trajectory}")
    print(f"wrote the weighted samples (positions nm, energies kT, log weights) to {path}")
    return 0


def _sample_sharded(gen, args: argparse.Namespace) -> int:
    """Every rank draws its shards and writes them to its own file; rank 0 merges them into the output."""
    from openmm_bg.analysis.merge import merge_sample_files
    from openmm_bg.model.sharded import part_path, sample_shards

    if args.trajectory:
        raise CLIError("--trajectory is not made by sharded sampling: resample the merged set in Python "
                       "(Samples.load(...).resample())")
    info = _join(args)
    _rank_resources(gen, info)
    samples = sample_shards(gen, args.n, seed=args.seed, shards=args.shards or _default_shards(),
                            temperature=args.temperature, anneal=_anneal_config(args), progress=info.is_main)
    if not info.distributed:
        path = samples.save(args.output)
        print(samples.summary())
        print(f"wrote the weighted samples ({len(samples.provenance['shards'])} shards) to {path}")
        return 0
    part = samples.save(part_path(args.output, info.rank, info.world_size))
    import torch

    torch.distributed.barrier()
    if info.is_main:
        parts = [part_path(args.output, r, info.world_size) for r in range(info.world_size)]
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            print(f"openmm-bg: rank 0 cannot see {', '.join(missing)} (no shared file system?): copy the parts "
                  f"together and run 'openmm-bg merge-samples {args.model} -o {args.output} PARTS...'")
        else:
            merged = merge_sample_files(parts, gen.system)
            path = merged.save(args.output)
            print(merged.summary())
            print(f"wrote the weighted samples of {info.world_size} ranks to {path} (parts: {parts[0].name}, ...)")
    else:
        print(f"rank {info.rank}: wrote {len(samples)} samples to {part}")
    _leave(info)
    return 0


def _cmd_merge_samples(args: argparse.Namespace) -> int:
    from openmm_bg.analysis.merge import merge_sample_files

    _check_output(args.output, (".npz",))
    gen = _load_model(args.model)
    merged = merge_sample_files(args.parts, gen.system)
    path = merged.save(args.output)
    print(merged.summary())
    print(f"merged {len(args.parts)} files ({len(merged.provenance['shards'])} of {merged.provenance['n_shards']} "
          f"shards) into {path}")
    return 0


def _cmd_free_energy(args: argparse.Namespace) -> int:
    from openmm_bg.analysis.free_energy import free_energy_profile, state_free_energy
    from openmm_bg.apps.plots import plot_profile

    out = output_folder("-o/--output", args.output)
    gen = _load_model(args.model, _device(args))
    files = [v for v in args.states or () if v.lower().endswith(".toml")]
    pairs = [v for v in args.states or () if not v.lower().endswith(".toml")]
    system = _defined(gen.system, args, files)
    gen.system = system  # the model's system with the user's coordinates and states
    states = _state_pair(pairs, args, system, files)
    for s in states:
        if s not in system.states:
            raise CLIError(f"system {system.name!r} has no state {s!r}; it has {sorted(system.states)} (define one "
                           "with --state NAME:CONDITION or --states FILE.toml)")
    coordinates = system.reaction_coordinates
    if args.profile is not None and args.profile not in coordinates:
        coordinates[args.profile] = _coordinate_of(system, args.profile, "--profile")
    samples = _draw(gen, args)
    result = state_free_energy(samples, states[0], states[1], n_bootstrap=args.bootstrap, seed=args.seed)
    print(result)
    _print_reliability(samples)
    report = {"free_energy": result.as_dict(), "diagnostics": samples.diagnostics(warn=False).as_dict()}
    if samples.provenance.get("kind") == "annealed":
        report["anneal"] = {k: samples.provenance[k] for k in ("anneal", "anneal_overrides", "n_levels",
                                                               "n_energy_evaluations", "n_energy_force_evaluations")}
    coordinate = args.profile if args.profile is not None else next(iter(coordinates), None)
    out.mkdir(parents=True, exist_ok=True)
    if coordinate is not None:
        profile = free_energy_profile(samples, coordinate, bins=args.bins, seed=args.seed)
        stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", coordinate).strip("_")  # 'phi:2' -> profile_phi_2.png
        path = plot_profile(profile, out / f"profile_{stem}.png", title=f"{gen.system.name}: {coordinate}")
        report["profile"] = profile.as_dict()
        print(f"profile along {coordinate}: {path}")
    write_text_atomic(out / "free_energy.json", json.dumps(report, indent=1) + "\n")
    print(f"numbers: {out / 'free_energy.json'}")
    return 0


def _state_pair(pairs: list[str], args: argparse.Namespace, system, files: list[str]) -> list[str]:
    """The two states of ``free-energy``: ``--states A,B``, or the two states that ``--state``/a state file define."""
    if len(pairs) > 1:
        raise CLIError(f"--states: give one pair of state names A,B (and any number of FILE.toml), got {pairs}")
    if pairs:
        states = [s.strip() for s in pairs[0].split(",")]
        if len(states) != 2 or not all(states):
            raise CLIError(f"--states takes two names separated by a comma, e.g. C7eq,C7ax, or a FILE.toml; got "
                           f"{pairs[0]!r}")
        return states
    from openmm_bg.systems import read_state_file

    defined = [st.split(":", 1)[0].strip() for st in args.state or ()]
    for f in files:
        defined += list(read_state_file(f, system).states)
    if len(defined) != 2:
        raise CLIError(f"name the two states to compare with --states A,B ({len(defined)} defined by --state and "
                       f"state files: {defined})")
    return defined


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(output_folder("-o/--output", args.output), quick=args.quick, from_scratch=args.from_scratch,
             seed=args.seed, n_samples=args.samples)
    return 0


# ---------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with its errors in the format of every other error: one ``openmm-bg: error:`` line, exit 2.

    Subcommand parsers are of the same class (argparse creates them with ``type(parent)``).
    """

    def error(self, message: str):
        self.exit(2, f"openmm-bg: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``openmm-bg``."""
    parser = _Parser(prog="openmm-bg", description="Boltzmann Generators for OpenMM systems.",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Units: positions nm, energies kT, temperatures K, times ps.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--threads", type=_checked(check.positive_int), default=1,
                        help="torch CPU threads (default 1: the flows are small, and it leaves cores to OpenMM)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("systems", help="list built-in systems with their states and reference energy (kT)")
    p.add_argument("name", nargs="?", help="show only this system")
    p.set_defaults(func=_cmd_systems)

    p = sub.add_parser("simulate", help="Langevin MD of a system, written as a trajectory (training data)")
    _system_arguments(p)
    p.add_argument("-n", "--frames", type=_checked(check.positive_int),
                   help="number of frames to write (default 1000)")
    p.add_argument("--ns", type=_checked(check.positive, "ns"),
                   help="simulated time in ns instead of -n (frames = ns / (stride x timestep))")
    p.add_argument("--stride", type=_checked(check.positive_int), default=500,
                   help="MD steps between frames (default 500)")
    p.add_argument("--timestep", type=_checked(check.positive, "ps"), help="time step in ps (default 0.001 for "
                   "molecules, 0.002 with constraints, 0.004 with constraints and --hydrogen-mass 1.5 or more, "
                   "0.005 for 2D toy systems; --hydrogen-mass without constraints keeps 0.001, with a warning)")
    p.add_argument("--friction", type=_checked(check.non_negative, "1/ps"), default=1.0,
                   help="collision rate in 1/ps, >= 0 (default 1)")
    p.add_argument("--equilibration", type=_checked(check.non_negative_int), default=0,
                   help="MD steps discarded before the first frame")
    p.add_argument("--minimize", action="store_true", help="minimise the energy first")
    p.add_argument("--seed", type=_checked(check.non_negative_int), default=0, help="random seed (default 0)")
    p.add_argument("--platform", help="OpenMM platform (Reference, CPU, CUDA, OpenCL; default the fastest)")
    _device_arguments(p, "the MD runs (a GPU: OpenMM's CUDA platform on it)")
    p.add_argument("-o", "--output", required=True, help="trajectory file (.h5, .dcd, .xtc, ...); while the run goes, "
                                                         "frames are on disk in OUTPUT.partial.dcd")
    p.add_argument("--resume", action="store_true", help="continue a stopped (killed, interrupted) run to the same "
                                                         "output from its checkpoint OUTPUT.partial.chk")
    p.add_argument("--starts", nargs="+", metavar="FILE", help="start structures (PDB or trajectory files, every frame "
                   "a start): -n frames from each, merged; each frame's start in OUTPUT.origins.json")
    p.add_argument("--torsion-starts", type=_checked(check.positive_int), metavar="K", help="add K starts made from "
                   "the reference by setting every residue's phi/psi to a random basin (peptides)")
    p.add_argument("--replica-exchange", metavar="LOW:HIGH:N", type=_temperature_ladder,
                   help="parallel tempering (openmmtools) over N temperatures from LOW (the system's, K) to HIGH, "
                        "exchanges every --stride steps; OUTPUT gets the LOW frames, the run is stored (and "
                        "reused, or continued with --resume) in OUTPUT.replicas.nc")
    p.add_argument("--all-temperatures", action="store_true",
                   help="with --replica-exchange: also write each higher temperature's frames to OUTPUT_<T>K.<suffix>")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("train", help="train a Boltzmann Generator on MD data (resumes an interrupted run)")
    _system_arguments(p)
    p.add_argument("--data", required=True, help="training trajectory (.h5 with topology, or .dcd/.xtc matching "
                                                 "the system's atoms)")
    p.add_argument("--config", help="TOML file of training stages ([[stage]] tables with steps, ml, kl, kl_end, "
                                    "rc, lr, lr_end, batch_size, ...); default: 1500 ML steps, then 3000 steps of "
                                    "KL + 0.1 ML")
    p.add_argument("--steps-scale", type=_checked(check.positive), default=1.0,
                   help="scale the default stages' step counts (> 0)")
    p.add_argument("--recipe", choices=["classic", "adaptive"], default="classic",
                   help="default stages without --config: classic (ML, then KL + 0.1 ML) or adaptive (ML with early "
                        "stopping on held-out time blocks, then mass-covering FAB fine-tuning with an ML weight set "
                        "from held-out data; sizes scale with the degrees of freedom)")
    p.add_argument("--flow", choices=["realnvp", "spline"], default="realnvp", help="flow architecture")
    p.add_argument("--n-blocks", type=_checked(check.positive_int), default=4, help="coupling blocks (default 4)")
    p.add_argument("--hidden", type=_checked(check.positive_int), nargs="+", default=[128, 128],
                   help="hidden layer widths (each >= 1)")
    p.add_argument("--rc", help="reaction coordinate for the RC loss: a name of the system's coordinates or "
                                "an expression (e.g. phi:2, distance:1/CA,5/CA; see --coordinate)")
    p.add_argument("--coverage-samples", type=_checked(check.positive_int), default=10000,
                   help="samples drawn after training for the coverage table and weight check (default 10000)")
    _definition_arguments(p)
    p.add_argument("--seed", type=_checked(check.non_negative_int), default=0, help="random seed (default 0)")
    p.add_argument("--checkpoint", help="checkpoint file (default OUTPUT.ckpt)")
    p.add_argument("--checkpoint-every", type=_checked(check.positive_int), default=100,
                   help="steps between checkpoints (default 100)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.bg)")
    _device_arguments(p, "the flow and the energies (OpenMM's CUDA platform on a GPU)")
    _distributed_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="draw weighted samples from a trained model")
    p.add_argument("model", help="model file written by 'openmm-bg train'")
    p.add_argument("-n", type=_checked(check.positive_int), default=10000, help="number of samples (default 10000)")
    p.add_argument("--temperature", type=_checked(check.temperature_kelvin),
                   help="sample at this temperature in K (weights exact)")
    p.add_argument("--seed", type=_checked(check.non_negative_int), default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", required=True, help="weighted samples (.npz: positions nm, energies kT, "
                                                         "log weights)")
    p.add_argument("--trajectory", help="also write an unweighted (resampled) trajectory, e.g. samples.h5")
    _device_arguments(p, "the flow and the energies (OpenMM's CUDA platform on a GPU)")
    _anneal_arguments(p)
    _distributed_arguments(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("merge-samples", help="merge the per-rank sample files of a sharded 'sample' run into one")
    p.add_argument("model", help="model file the samples were drawn from (it names the system)")
    p.add_argument("parts", nargs="+", help="samples files of the ranks (NAME.rank{r}of{R}.npz)")
    p.add_argument("-o", "--output", required=True, help="merged samples (.npz)")
    p.set_defaults(func=_cmd_merge_samples)

    p = sub.add_parser("free-energy", help="free-energy difference between two states, with a profile plot")
    p.add_argument("model", help="model file written by 'openmm-bg train'")
    p.add_argument("--states", action="append", metavar="A,B or FILE.toml",
                   help="two state names, e.g. C7eq,C7ax (A,B gives A(B) - A(A)), and/or TOML files of [coordinates] "
                        "and [states] (repeatable; without A,B the two states defined are compared). Every "
                        "residue's backbone basins alphaR_R, beta_R, alphaL_R are defined too")
    p.add_argument("-n", type=_checked(check.positive_int), default=50000, help="number of samples (default 50000)")
    p.add_argument("--profile", help="reaction coordinate of the profile: a name or an expression such as psi:2 "
                                     "(default the system's first)")
    p.add_argument("--bins", type=_checked(check.integer, 2), default=50, help="bins of the profile (>= 2)")
    p.add_argument("--bootstrap", type=_checked(check.integer, 2), default=200,
                   help="bootstrap replicas for the error bar, their spread (>= 2; default 200)")
    p.add_argument("--temperature", type=_checked(check.temperature_kelvin),
                   help="temperature in K (default the model's)")
    p.add_argument("--seed", type=_checked(check.non_negative_int), default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default="free_energy", help="output folder (JSON numbers, PNG profile)")
    _device_arguments(p, "the flow and the energies (OpenMM's CUDA platform on a GPU)")
    _anneal_arguments(p)
    _definition_arguments(p, states_files=False)
    p.set_defaults(func=_cmd_free_energy)

    p = sub.add_parser("demo", help="the main job: alanine dipeptide in vacuum, Delta A(C7ax - C7eq) and plots")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny MD and training (about a minute)")
    p.add_argument("--from-scratch", action="store_true", help="run MD and training instead of using the "
                                                                "shipped pretrained model (under 15 minutes)")
    p.add_argument("--samples", type=_checked(check.positive_int),
                   help="number of generator samples (default 100000; 5000 with --quick)")
    p.add_argument("--seed", type=_checked(check.non_negative_int), default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default="openmm-bg-demo", help="output folder (default openmm-bg-demo)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``openmm-bg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    try:
        if args.command not in ("train", "sample") and _rank().distributed:
            raise CLIError(f"'{args.command}' runs on one process; only train and sample run on several ranks")
        if args.command != "systems":
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    except (CLIError, KeyError, ValueError, OSError, TypeError, RuntimeError) as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"openmm-bg: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("openmm-bg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
