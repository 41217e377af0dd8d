"""What every tutorial script shares: the ``--smoke``, ``--seed`` and ``--output`` options."""

from __future__ import annotations

import argparse
from pathlib import Path


def tutorial_parser(name: str, doc: str, smoke_help: str = "seconds: tiny MD and training (for CI)",
                    output_help: str = "folder for the PNG files") -> argparse.ArgumentParser:
    """Argument parser with the common options; tutorials add their own before parsing."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--seed", type=int, default=0, help="seeds MD, training and sampling")
    parser.add_argument("--output", type=Path, default=Path("tutorial-output") / name, help=output_help)
    return parser
