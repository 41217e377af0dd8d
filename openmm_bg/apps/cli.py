"""The ``openmm-bg`` command line.

Subcommands (``openmm-bg SUBCOMMAND --help`` explains every option with its unit)::

    openmm-bg systems                               # built-in systems, states, reference energies
    openmm-bg simulate alanine_dipeptide -n 2000 --stride 500 -o md.h5   # --resume after a kill
    openmm-bg train alanine_dipeptide --data md.h5 -o model.bg      # resumable (checkpoint beside -o)
    openmm-bg sample model.bg -n 100000 -o samples.npz
    openmm-bg sample model.bg -n 100000 --anneal -o annealed.npz   # exact, lighter-tailed weights
    openmm-bg free-energy model.bg --states C7eq,C7ax --profile phi -o results/
    openmm-bg demo                                  # the main job (alanine dipeptide, vacuum)

A system is a built-in name (with ``--option key=value`` for its options, e.g. ``solvent=implicit``)
or files: ``x.pdb`` with ``--forcefield``, ``x.prmtop``/``x.top``/``x.psf`` with ``--coordinates``.
Errors are one line with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    return spec


def load_system(spec: dict):
    """A `MolecularSystem` from a spec written by `system_spec`.

    A ``"temperature"`` of None or no such key means the system's own; any other value must be a
    positive, finite temperature in K.
    """
    import openmm_bg.systems as bgs

    temperature = spec.get("temperature")
    extra = {} if temperature is None else {"temperature": check.temperature_kelvin("temperature", temperature)}
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


def _system_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("system", help="built-in system name (see 'openmm-bg systems') or a structure/topology file "
                                  "(.pdb, .prmtop, .top, .psf)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="option of a built-in system, e.g. solvent=implicit, constraints=hbonds (repeatable)")
    p.add_argument("--coordinates", help="coordinate file for a topology file (.inpcrd, .gro, .crd)")
    p.add_argument("--forcefield", nargs="+", help="OpenMM force-field XML files for a PDB "
                                                   "(default amber14-all.xml)")
    p.add_argument("--parameters", nargs="+", help="CHARMM parameter files (.prm, .rtf, .str)")
    p.add_argument("--implicit-solvent", help="implicit-solvent model for topology files: OBC1, OBC2, GBn, GBn2, HCT")
    p.add_argument("--temperature", type=_checked(check.temperature_kelvin),
                   help="temperature in K (default: the system's, 300 K)")


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
    system = load_system(system_spec(args))
    partial = PartialRun(args.output)
    if args.resume and partial.exists():
        print(f"continuing: {partial.describe()}")
    try:
        traj = openmm_bg.simulate(system, n_frames=args.frames, stride=args.stride, seed=args.seed,
                                  timestep=args.timestep, friction=args.friction, output=args.output,
                                  equilibration_steps=args.equilibration, minimize=args.minimize,
                                  platform=args.platform, resume=args.resume)
    except (KeyboardInterrupt, RuntimeError) as err:  # frames so far are kept: say where and how to go on
        for note in getattr(err, "__notes__", []):
            print(f"openmm-bg: {note}", file=sys.stderr)
        raise
    print(f"wrote {traj.n_frames} frames ({traj.time[-1]:.1f} ps) of {system.name} to {args.output}")
    return 0


def _check_output(path, suffixes, name: str = "output") -> None:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise CLIError(f"{name} {str(p)!r}: use one of the suffixes {', '.join(suffixes)}")
    output_file(name, p)  # a folder that exists and accepts files; not a folder itself


def _cmd_train(args: argparse.Namespace) -> int:
    import openmm_bg
    from openmm_bg.apps.plots import plot_history
    from openmm_bg.flows.builder import check_flow_arguments
    from openmm_bg.training import Trainer, default_stages, load_stages
    from openmm_bg.training.trainer import training_coordinate

    # everything that can be checked is checked before the model is built or trained
    stages = load_stages(args.config) if args.config else default_stages(args.steps_scale)
    output = output_file("-o/--output", args.output)
    checkpoint = output_file("--checkpoint", args.checkpoint or output.with_name(output.name + ".ckpt"))
    check_flow_arguments(kind=args.flow, n_blocks=args.n_blocks, hidden=args.hidden, seed=args.seed)
    if not Path(args.data).is_file():
        raise CLIError(f"training data not found: {args.data!r}; make some with 'openmm-bg simulate'")
    spec = system_spec(args)
    system = load_system(spec)
    system.require_nonperiodic("openmm-bg train")
    training_coordinate(system, args.rc, stages)
    gen = openmm_bg.BoltzmannGenerator.build(system, args.data, flow=args.flow, n_blocks=args.n_blocks,
                                             hidden=tuple(args.hidden), seed=args.seed)
    metrics = output.with_name(output.stem + "_training.csv")
    trainer = Trainer(gen, args.data, stages, seed=args.seed, rc=args.rc, checkpoint=checkpoint,
                      checkpoint_every=args.checkpoint_every, metrics=metrics)
    if checkpoint.exists() and not args.restart:
        step = trainer.read_checkpoint(checkpoint)["step"]  # refuses a checkpoint of another run
        print(f"resuming from {checkpoint} at step {step} of {trainer.total_steps} (use --restart to start over)")
    elif checkpoint.exists():
        checkpoint.unlink()
    history = trainer.fit(resume=not args.restart)
    gen.save(output, extra={"system_spec": spec})
    plot = plot_history(history, output.with_name(output.stem + "_training.png"))
    last = history[-1]
    print(f"trained {len(history)} steps ({trainer.n_skipped} skipped), final ML {last['ml']:.3f}, "
          f"KL {last['kl']:.3f} kT; model {output}, metrics {metrics}, curves {plot}")
    return 0


def _load_model(path: str):
    """The generator of a model file with the system it was trained for (as ``train`` stored it).

    A ``--temperature`` goes to ``sample(temperature=...)``, not into the system: the command line
    then draws exactly what the library draws for the same seed.
    """
    import openmm_bg
    from openmm_bg.model import read_model_file

    payload = read_model_file(path)
    spec = payload.get("extra", {}).get("system_spec")
    if spec is None:
        raise CLIError(f"{path} does not say which system it belongs to (saved outside the CLI); load it "
                       "in Python with BoltzmannGenerator.load(path, system)")
    system = load_system(spec)
    return openmm_bg.BoltzmannGenerator.load(path, system)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _anneal_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("annealed sampling (exact weights, lighter tails; costs energy + force evaluations)")
    g.add_argument("--anneal", action="store_true", help="anneal the samples from the generator to the Boltzmann "
                                                         "distribution (SMC in the flow's latent space)")
    g.add_argument("--anneal-levels", type=_positive_int, metavar="K",
                   help="levels (adaptive: at most K; default 32)")
    g.add_argument("--anneal-kernel", choices=["mala", "hmc"], help="MCMC kernel of every level (default mala)")
    g.add_argument("--anneal-steps", type=_positive_int, metavar="M", help="kernel steps per level (default 1)")
    g.add_argument("--anneal-step-size", type=_positive_float, metavar="S",
                   help="kernel step size in latent units (adaptive: of the first level; default 0.1)")
    g.add_argument("--anneal-fixed", action="store_true",
                   help="fixed schedule: K equally spaced levels, frozen step size (exactly unbiased normaliser)")


def _anneal_config(args: argparse.Namespace):
    """The `openmm_bg.sampling.AnnealConfig` of the ``--anneal*`` options, or None without ``--anneal``."""
    from openmm_bg.sampling import AnnealConfig

    options = {"n_levels": args.anneal_levels, "kernel": args.anneal_kernel,
               "mcmc_steps_per_level": args.anneal_steps, "step_size": args.anneal_step_size}
    if not args.anneal:
        given = [f"--{k}" for k, v in (("anneal-levels", args.anneal_levels), ("anneal-kernel", args.anneal_kernel),
                                       ("anneal-steps", args.anneal_steps), ("anneal-step-size", args.anneal_step_size),
                                       ("anneal-fixed", args.anneal_fixed or None)) if v is not None]
        if given:
            raise CLIError(f"{', '.join(given)} only apply with --anneal; add --anneal or drop them")
        return None
    return AnnealConfig(adaptive=not args.anneal_fixed, **{k: v for k, v in options.items() if v is not None})


def _draw(gen, args: argparse.Namespace):
    """Plain or (with ``--anneal``) annealed samples of a model, with a progress bar."""
    config = _anneal_config(args)
    samples = gen.sample(args.n, temperature=args.temperature, seed=args.seed, progress=True, anneal=config)
    if config is not None:
        p = samples.provenance
        print(f"annealed {len(samples)} particles in {p['n_levels']} levels: {p['n_energy_evaluations']} energy "
              f"evaluations ({p['n_energy_force_evaluations']} with forces), {p['n_distinct_ancestors']} distinct "
              "ancestors")
    return samples


def _cmd_sample(args: argparse.Namespace) -> int:
    gen = _load_model(args.model)
    from openmm_bg.md.simulation import OUTPUT_SUFFIXES

    _check_output(args.output, (".npz",))
    if args.trajectory:
        _check_output(args.trajectory, OUTPUT_SUFFIXES, "--trajectory")
    samples = _draw(gen, args)
    path = samples.save(args.output)
    print(samples.summary())
    if args.trajectory:
        traj = samples.resample(seed=args.seed)
        traj.save(args.trajectory)
        print(f"wrote {traj.n_frames} resampled (unweighted) frames to {args.trajectory}")
    print(f"wrote the weighted samples (positions nm, energies kT, log weights) to {path}")
    return 0


def _cmd_free_energy(args: argparse.Namespace) -> int:
    from openmm_bg.analysis.free_energy import free_energy_profile, state_free_energy
    from openmm_bg.apps.plots import plot_profile

    out = output_folder("-o/--output", args.output)
    gen = _load_model(args.model)
    states = [s.strip() for s in args.states.split(",")]
    if len(states) != 2:
        raise CLIError(f"--states takes two names separated by a comma, e.g. C7eq,C7ax; got {args.states!r}")
    for s in states:
        if s not in gen.system.states:
            raise CLIError(f"system {gen.system.name!r} has no state {s!r}; it has {sorted(gen.system.states)}")
    coordinates = gen.system.reaction_coordinates
    if args.profile is not None and args.profile not in coordinates:
        raise CLIError(f"--profile: system {gen.system.name!r} has no reaction coordinate {args.profile!r}; "
                       f"it has {sorted(coordinates)}")
    samples = _draw(gen, args)
    result = state_free_energy(samples, states[0], states[1], n_bootstrap=args.bootstrap, seed=args.seed)
    print(result)
    report = {"free_energy": result.as_dict(), "diagnostics": samples.diagnostics(warn=False).as_dict()}
    coordinate = args.profile if args.profile is not None else next(iter(coordinates), None)
    out.mkdir(parents=True, exist_ok=True)
    if coordinate is not None:
        profile = free_energy_profile(samples, coordinate, bins=args.bins, seed=args.seed)
        path = plot_profile(profile, out / f"profile_{coordinate}.png", title=f"{gen.system.name}: {coordinate}")
        report["profile"] = profile.as_dict()
        print(f"profile along {coordinate}: {path}")
    write_text_atomic(out / "free_energy.json", json.dumps(report, indent=1) + "\n")
    print(f"numbers: {out / 'free_energy.json'}")
    return 0


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
    p.add_argument("-n", "--frames", type=_checked(check.positive_int), default=1000,
                   help="number of frames to write (default 1000)")
    p.add_argument("--stride", type=_checked(check.positive_int), default=500,
                   help="MD steps between frames (default 500)")
    p.add_argument("--timestep", type=_checked(check.positive, "ps"), help="time step in ps (default 0.001 for "
                   "molecules, 0.002 with constraints, 0.005 for 2D toy systems)")
    p.add_argument("--friction", type=_checked(check.non_negative, "1/ps"), default=1.0,
                   help="collision rate in 1/ps, >= 0 (default 1)")
    p.add_argument("--equilibration", type=_checked(check.non_negative_int), default=0,
                   help="MD steps discarded before the first frame")
    p.add_argument("--minimize", action="store_true", help="minimise the energy first")
    p.add_argument("--seed", type=_checked(check.non_negative_int), default=0, help="random seed (default 0)")
    p.add_argument("--platform", help="OpenMM platform (Reference, CPU, CUDA, OpenCL; default the fastest)")
    p.add_argument("-o", "--output", required=True, help="trajectory file (.h5, .dcd, .xtc, ...); while the run goes, "
                                                         "frames are on disk in OUTPUT.partial.dcd")
    p.add_argument("--resume", action="store_true", help="continue a stopped (killed, interrupted) run to the same "
                                                         "output from its checkpoint OUTPUT.partial.chk")
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
    p.add_argument("--flow", choices=["realnvp", "spline"], default="realnvp", help="flow architecture")
    p.add_argument("--n-blocks", type=_checked(check.positive_int), default=4, help="coupling blocks (default 4)")
    p.add_argument("--hidden", type=_checked(check.positive_int), nargs="+", default=[128, 128],
                   help="hidden layer widths (each >= 1)")
    p.add_argument("--rc", help="reaction coordinate for the RC loss (a name of the system's coordinates)")
    p.add_argument("--seed", type=_checked(check.non_negative_int), default=0, help="random seed (default 0)")
    p.add_argument("--checkpoint", help="checkpoint file (default OUTPUT.ckpt)")
    p.add_argument("--checkpoint-every", type=_checked(check.positive_int), default=100,
                   help="steps between checkpoints (default 100)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.bg)")
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
    _anneal_arguments(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("free-energy", help="free-energy difference between two states, with a profile plot")
    p.add_argument("model", help="model file written by 'openmm-bg train'")
    p.add_argument("--states", required=True, help="two state names, e.g. C7eq,C7ax (A,B gives A(B) - A(A))")
    p.add_argument("-n", type=_checked(check.positive_int), default=50000, help="number of samples (default 50000)")
    p.add_argument("--profile", help="reaction coordinate of the profile (default the system's first)")
    p.add_argument("--bins", type=_checked(check.integer, 2), default=50, help="bins of the profile (>= 2)")
    p.add_argument("--bootstrap", type=_checked(check.integer, 2), default=200,
                   help="bootstrap replicas for the error bar, their spread (>= 2; default 200)")
    p.add_argument("--temperature", type=_checked(check.temperature_kelvin),
                   help="temperature in K (default the model's)")
    p.add_argument("--seed", type=_checked(check.non_negative_int), default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default="free_energy", help="output folder (JSON numbers, PNG profile)")
    _anneal_arguments(p)
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
