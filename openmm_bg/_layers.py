"""The layer order of openmm-bg, defined once (read by ``tests/test_architecture.py``; drawn in
``docs/architecture.md``).

Layers are listed bottom to top. A module may import from its own layer and the layers below it,
never from a layer above; the layer of a module is that of its top-level part of the package
(``openmm_bg.energy.torchff.forcefield`` is in ``energy``). The bare package ``openmm_bg`` (its
``__init__``, which re-exports the main entry points) and `openmm_bg._compat` belong to the top
layer.

Upward imports are allowed only as compatibility hooks for old import paths: `openmm_bg._compat`,
a module-level ``__getattr__`` (the shims in ``energy/__init__.py`` and ``training/__init__.py``),
or an import line carrying the marker ``# compat: upward import``.

Examples
--------
>>> from openmm_bg._layers import layer_of
>>> layer_of("openmm_bg.energy.torchff.forcefield") < layer_of("openmm_bg.flows.builder")
True
"""

from __future__ import annotations

__all__ = ["LAYERS", "PLANNED", "COMPAT_MODULES", "COMPAT_MARKER", "layer_of", "package_names"]

#: Bottom to top: (layer name, the top-level parts of ``openmm_bg`` in it).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("utilities", ("constants", "geometry", "data", "distributed", "_validation", "_quiet_imports", "_output",
                   "_version", "_layers")),
    ("systems", ("systems",)),
    ("energy", ("energy",)),
    ("md", ("md",)),
    ("transforms", ("transforms",)),
    ("flows", ("flows",)),
    ("analysis", ("analysis",)),
    ("sampling", ("sampling",)),
    ("model", ("model",)),
    ("training", ("training",)),
    ("mcmc", ("mcmc",)),
    ("apps", ("apps",)),
)

#: Layers planned but not written yet: name -> the layer it will sit directly above.
PLANNED: dict[str, str] = {}

#: Modules that may import from anywhere (compatibility hooks).
COMPAT_MODULES: frozenset[str] = frozenset({"openmm_bg._compat"})

#: Comment marking an allowed upward import line.
COMPAT_MARKER = "# compat: upward import"

_INDEX = {part: k for k, (_, parts) in enumerate(LAYERS) for part in parts}


def layer_of(module: str) -> int:
    """Index in `LAYERS` of a module of openmm-bg (the top layer's for the bare package).

    Raises
    ------
    KeyError
        For a top-level part of the package that no layer lists (add it to `LAYERS`).
    """
    parts = module.split(".")
    if parts[0] != "openmm_bg":
        raise ValueError(f"{module!r} is not a module of openmm_bg")
    if len(parts) == 1 or module in COMPAT_MODULES:
        return len(LAYERS) - 1
    if parts[1] not in _INDEX:
        raise KeyError(f"openmm_bg.{parts[1]} is in no layer of openmm_bg._layers.LAYERS; add it there "
                       "and to docs/architecture.md")
    return _INDEX[parts[1]]


def package_names() -> list[str]:
    """The top-level parts of the package named by the layers (without private modules)."""
    return [part for _, parts in LAYERS for part in parts if not part.startswith("_")]
