"""The ``openmm-bg`` command line.

Examples
--------
$ openmm-bg systems            # list built-in systems, their states and reference energies
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _cmd_systems(args: argparse.Namespace) -> int:
    import openmm_bg.systems as bgs

    names = [args.name] if args.name else bgs.names()
    for name in names:
        system = bgs.load(name)
        energy = system.reduced_energy()[0]
        print(f"{system.summary()}")
        print(f"    {system.description}; reference energy {energy:.3f} kT")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``openmm-bg``."""
    parser = argparse.ArgumentParser(
        prog="openmm-bg", description="Boltzmann Generators for OpenMM systems.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("systems", help="list built-in systems with their states and reference energy (kT)")
    p.add_argument("name", nargs="?", help="show only this system")
    p.set_defaults(func=_cmd_systems)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``openmm-bg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, TypeError) as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"openmm-bg: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
