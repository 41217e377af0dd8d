"""States as ranges of reaction coordinates, from text or a TOML file; registering them on a system.

The grammar of a state (coordinate expressions ``EXPR`` as in `openmm_bg.systems.coordinates`)::

    STATE     := NAME ":" CONDITION          (the command line's --state option)
    CONDITION := CLAUSE ("and" CLAUSE)*      (a conjunction: every clause holds)
    CLAUSE    := EXPR "in" RANGE | EXPR "not in" RANGE | EXPR "<" NUMBER | EXPR ">" NUMBER
    RANGE     := "(" NUMBER "," NUMBER ")"   (open interval)
    NUMBER    := a number, in the coordinate's unit (rad, nm) | a number with "deg" (angles only)
               | "pi", "-pi", "inf", "-inf"

- For a periodic coordinate (a dihedral) a range whose low end is above its high end wraps
  through +-pi: ``psi:2 in (2.5, -2.5)`` is ``psi > 2.5 or psi < -2.5``; ``(2.5, 4.0)`` is the same
  as ``(2.5, -2.28)``. A range spans less than a full turn.
- For other coordinates the low end must be below the high end.
- NAME starts with a letter or ``_``, then letters, digits, ``_ . + -``.

Examples: ``C7ax:phi:2 in (0, 2.2)``, ``helix:phi:2 in (-160deg, -20deg) and psi:2 in (-120deg, 50deg)``,
``closed:distance:1/CA,5/CA < 0.6``, ``native:rmsd:native.pdb[backbone] < 0.15``.

A state file (TOML) defines coordinates and states; a state is a CONDITION or a table of ranges,
all of which must hold::

    [coordinates]                      # NAME = EXPR
    ends = "distance:1/CA,4/CA"

    [states]
    C7ax = "phi:2 in (0, 2.2)"
    compact = "ends < 0.8 and psi:2 not in (-1, 1)"
    helix = { "phi:2" = ["-160deg", "-20deg"], "psi:2" = ["-120deg", "50deg"] }

Examples
--------
>>> import openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> s = state(ala, "C7ax", "phi:2 in (0, 2.2)")
>>> bool(s(ala.positions[None])[0]), s.description
(False, 'phi:2 in (0, 2.2)')
>>> parse_state_option(ala, "beta:psi:2 in (50deg, -120deg)").name
'beta'
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .coordinates import CoordinateError, backbone_definitions, coordinate, coordinate_from_spec
from .molecular_system import MolecularSystem, ReactionCoordinate, State

__all__ = ["state", "parse_state_option", "parse_coordinate_option", "Definitions", "read_state_file",
           "define", "state_from_spec", "coordinate_entry", "coordinate_from_entry"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")
_RANGE = re.compile(r"^(?P<expr>.+?)\s+(?P<op>not\s+in|in)\s*\((?P<body>[^()]*)\)$", re.IGNORECASE)
_COMPARE = re.compile(r"^(?P<expr>.+)(?P<op>[<>])\s*(?P<value>[^<>\]]+)$")  # the last < or >
_TWO_PI = 2 * math.pi


def _split_and(text: str) -> list[str]:
    """``text`` split at the word ``and`` outside brackets (an mdtraj selection may hold an ``and``)."""
    parts, depth, start = [], 0, 0
    for m in re.finditer(r"[\[(]|[\])]|\band\b", text, flags=re.IGNORECASE):
        token = m.group(0)
        if token in "[(":
            depth += 1
        elif token in "])":
            depth -= 1
        elif depth == 0:
            parts.append(text[start:m.start()])
            start = m.end()
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _number(text: str, rc: ReactionCoordinate, clause: str) -> float:
    t = text.strip().lower().replace(" ", "")
    sign = -1.0 if t.startswith("-") else 1.0
    body = t.lstrip("+-")
    if body in ("pi", "inf"):
        return sign * (math.pi if body == "pi" else math.inf)
    degrees = body.endswith("deg")
    body = body.removesuffix("deg")
    try:
        value = sign * float(body)
    except ValueError:
        raise CoordinateError(f"{clause!r}: {text.strip()!r} is not a number; write e.g. 1.2, -60deg, pi or "
                              "inf") from None
    if not math.isfinite(value):
        raise CoordinateError(f"{clause!r}: {text.strip()!r} is not a finite number; write inf or -inf for no bound")
    if degrees:
        if rc.unit != "rad":
            raise CoordinateError(f"{clause!r}: 'deg' applies to angles only; {rc.name} is in {rc.unit}")
        value = math.radians(value)
    return value


def _interval(rc: ReactionCoordinate, low: float, high: float, clause: str):
    """A torch indicator ``v -> low < v < high`` (wrapped through +-pi for a periodic ``rc``)."""
    if rc.periodic and math.isfinite(low) and math.isfinite(high):
        if abs(high - low) >= _TWO_PI or low == high:
            raise CoordinateError(f"{clause!r}: a range of the periodic {rc.name} must span less than a full turn and "
                                  f"more than nothing, got ({low:g}, {high:g}) rad")
        width = math.remainder(high - low, _TWO_PI) % _TWO_PI
        return lambda v: (torch.remainder(v - low, _TWO_PI) > 0) & (torch.remainder(v - low, _TWO_PI) < width)
    if not low < high:
        hint = " (only a range of a periodic coordinate, a dihedral, may wrap)" if not rc.periodic else ""
        raise CoordinateError(f"{clause!r}: malformed range ({low:g}, {high:g}): the low end must be below the high "
                              f"end{hint}")
    return lambda v: (v > low) & (v < high)


def _test(rc: ReactionCoordinate, op: str, low: float, high: float, clause: str):
    """Indicator of a clause's values: ``op`` ``in``/``not in`` (a range), ``<`` (``high``), ``>`` (``low``)."""
    if op == "<":
        return lambda v: v < high
    if op == ">":
        return lambda v: v > low
    inside = _interval(rc, low, high, clause)
    return inside if op == "in" else (lambda v: ~inside(v))


def _clause(system: MolecularSystem, text: str, extra, base):
    """``(coordinate, indicator of its values, its recipe)`` of one CLAUSE (recipe: op, low, high)."""
    m = _RANGE.match(text)
    if m:
        rc = coordinate(system, m.group("expr"), extra=extra, base=base)
        ends = m.group("body").split(",")
        if len(ends) != 2 or not all(e.strip() for e in ends):
            raise CoordinateError(f"{text!r}: malformed range ({m.group('body')}); write (LOW, HIGH), e.g. (0, 2.2)")
        low, high = (_number(e, rc, text) for e in ends)
        op = "in" if m.group("op").lower() == "in" else "not in"
        return rc, _test(rc, op, low, high, text), {"op": op, "low": low, "high": high}
    m = _COMPARE.match(text)
    if m:
        rc = coordinate(system, m.group("expr"), extra=extra, base=base)
        value = _number(m.group("value"), rc, text)
        op = m.group("op")
        low, high = (-math.inf, value) if op == "<" else (value, math.inf)
        return rc, _test(rc, op, low, high, text), {"op": op, "low": low, "high": high}
    raise CoordinateError(f"{text!r}: malformed condition; write EXPR in (LOW, HIGH), EXPR not in (LOW, HIGH), "
                          "EXPR < VALUE or EXPR > VALUE, joined by 'and' (e.g. phi:2 in (0, 2.2) and psi:2 < 0)")


def state(system: MolecularSystem, name: str, condition: str,
          extra: Mapping[str, ReactionCoordinate] | None = None, base: str | Path | None = None) -> State:
    """The `State` of a CONDITION (grammar in the module docstring), checked before any work.

    Parameters
    ----------
    system : MolecularSystem
    name : str
        Name of the state.
    condition : str
        E.g. ``"phi:2 in (0, 2.2)"`` or ``"phi_2 < 0 and psi_2 in (50deg, -120deg)"``.
    extra : mapping of str -> ReactionCoordinate, optional
        Further named coordinates the condition may use.
    base : str or Path, optional
        Folder relative RMSD reference files are relative to.

    Raises
    ------
    CoordinateError
        A bad name, a malformed condition or range, or a bad coordinate expression.
    """
    _check_name(name, "state")
    if not isinstance(condition, str) or not condition.strip():
        raise CoordinateError(f"state {name!r}: the condition is empty; write e.g. 'phi:2 in (0, 2.2)'")
    clauses = [_clause(system, c, extra, base) for c in _split_and(condition)]
    spec = None
    if all(rc.spec is not None for rc, *_ in clauses):  # stored in model files (openmm_bg.systems.record)
        spec = {"kind": "clauses", "clauses": [{"coordinate": coordinate_entry(rc), **recipe}
                                               for rc, _, recipe in clauses]}
    return _clauses_state(name, [(rc, test) for rc, test, _ in clauses],
                          " and ".join(_split_and(" ".join(condition.split()))), spec)


def _clauses_state(name: str, clauses, description: str, spec: dict | None) -> State:
    def indicator(x: torch.Tensor) -> torch.Tensor:
        inside = None
        for rc, test in clauses:
            ok = test(rc.function(x))
            inside = ok if inside is None else inside & ok
        return inside

    return State(name, indicator, description, spec=spec)


def coordinate_entry(rc: ReactionCoordinate) -> dict:
    """A coordinate as plain data (its recipe, period, bounds, unit): what a model file stores."""
    return {"name": rc.name, "spec": rc.spec, "periodic": rc.periodic, "bounds": [float(b) for b in rc.bounds],
            "unit": rc.unit, "description": rc.description}


def coordinate_from_entry(entry: dict) -> ReactionCoordinate | None:
    """The coordinate of a stored entry (`openmm_bg.systems.record`), or None for an unknown kind."""
    rc = coordinate_from_spec(entry["name"], entry["spec"], description=entry.get("description") or None)
    if rc is None:
        return None
    return replace(rc, periodic=bool(entry["periodic"]), bounds=tuple(float(b) for b in entry["bounds"]),
                   unit=entry["unit"])


def state_from_spec(name: str, spec: dict, description: str = "") -> State | None:
    """The state of a stored ``"clauses"`` recipe (what `state` records), or None if a part is of an unknown kind.

    The recipe embeds every coordinate it uses (an RMSD with its reference positions), so the
    state needs neither the system's other coordinates nor any file.

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> ala = bgs.load("alanine_dipeptide")
    >>> s = state(ala, "ax", "phi:2 in (0, 2.2) and distance:0,1 < 0.2")
    >>> again = state_from_spec("ax", s.spec, s.description)
    >>> bool(again(ala.positions[None])[0] == s(ala.positions[None])[0]), again.description
    (True, 'phi:2 in (0, 2.2) and distance:0,1 < 0.2')
    """
    if spec.get("kind") != "clauses":
        return None
    clauses = []
    for clause in spec["clauses"]:
        rc = coordinate_from_entry(clause["coordinate"])
        if rc is None:
            return None
        op, low, high = clause["op"], float(clause["low"]), float(clause["high"])
        if op not in ("in", "not in", "<", ">"):
            return None
        clauses.append((rc, _test(rc, op, low, high, f"state {name!r}")))
    return _clauses_state(name, clauses, description, spec)


def _check_name(name, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CoordinateError(f"{what} name {name!r} is not valid: start with a letter or '_', then letters, digits, "
                              "'_', '.', '+', '-' (e.g. C7ax, helix_2)")


def _split_option(text: str, what: str, example: str) -> tuple[str, str]:
    if not isinstance(text, str) or ":" not in text:
        raise CoordinateError(f"--{what} takes NAME:{'CONDITION' if what == 'state' else 'EXPR'}, got {text!r} "
                              f"(e.g. {example!r})")
    name, body = (part.strip() for part in text.split(":", 1))
    _check_name(name, what)
    return name, body


def parse_state_option(system: MolecularSystem, text: str,
                       extra: Mapping[str, ReactionCoordinate] | None = None) -> State:
    """The `State` of a ``NAME:CONDITION`` text (the ``--state`` option), e.g. ``"C7ax:phi:2 in (0, 2.2)"``."""
    name, condition = _split_option(text, "state", "C7ax:phi:2 in (0, 2.2)")
    return state(system, name, condition, extra=extra)


def parse_coordinate_option(system: MolecularSystem, text: str,
                            extra: Mapping[str, ReactionCoordinate] | None = None) -> ReactionCoordinate:
    """The coordinate of a ``NAME:EXPR`` text (the ``--coordinate`` option), e.g. ``"ends:distance:1/CA,4/CA"``."""
    name, expression = _split_option(text, "coordinate", "ends:distance:1/CA,4/CA")
    return coordinate(system, expression, name=name, extra=extra)


@dataclass
class Definitions:
    """Coordinates and states defined for a system (by a state file, options or `backbone_definitions`).

    Attributes
    ----------
    coordinates : dict of str -> ReactionCoordinate
    states : dict of str -> State
    """

    coordinates: dict[str, ReactionCoordinate] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)


def _range_clause(expr: str, value, where: str) -> str:
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in value)):
        raise CoordinateError(f"{where}: {expr!r} must be a range [LOW, HIGH] of numbers or texts such as '-60deg', "
                              f"got {value!r}")
    return f"{expr} in ({value[0]}, {value[1]})"


def read_state_file(path: str | Path, system: MolecularSystem,
                    extra: Mapping[str, ReactionCoordinate] | None = None) -> Definitions:
    """Coordinates and states of a TOML state file (format in the module docstring), checked for ``system``.

    Relative RMSD reference files are relative to the state file's folder.

    Raises
    ------
    FileNotFoundError
        No such file.
    CoordinateError
        Not TOML, unknown tables or keys, or a bad coordinate or state; the message names the file
        and the entry.
    """
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state file not found: {str(path)!r}")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise CoordinateError(f"{path}: not a TOML file ({err}); see openmm_bg.systems.state_files for the "
                              "format") from None
    unknown = sorted(set(doc) - {"coordinates", "states"})
    if unknown:
        raise CoordinateError(f"{path}: unknown table(s) {unknown}; a state file has [coordinates] and [states]")
    out = Definitions()
    known = dict(extra or {})
    for name, expression in (doc.get("coordinates") or {}).items():
        where = f"{path}: [coordinates] {name}"
        if not isinstance(expression, str):
            raise CoordinateError(f"{where}: give the coordinate as text, e.g. \"distance:1/CA,4/CA\"")
        _check_name(name, "coordinate")
        try:
            rc = coordinate(system, expression, name=name, extra=known, base=path.parent)
        except CoordinateError as err:
            raise CoordinateError(f"{where}: {err}") from None
        out.coordinates[name] = known[name] = rc
    for name, condition in (doc.get("states") or {}).items():
        where = f"{path}: [states] {name}"
        if isinstance(condition, dict):
            if not condition:
                raise CoordinateError(f"{where}: the table of ranges is empty")
            condition = " and ".join(_range_clause(k, v, where) for k, v in condition.items())
        elif not isinstance(condition, str):
            raise CoordinateError(f"{where}: give a condition as text (e.g. \"phi:2 in (0, 2.2)\") or a table of "
                                  "ranges (e.g. {{ \"phi:2\" = [0, 2.2] }})")
        try:
            out.states[name] = state(system, name, condition, extra=known, base=path.parent)
        except CoordinateError as err:
            raise CoordinateError(f"{where}: {err}") from None
    return out


def define(system: MolecularSystem, coordinates: Mapping[str, str] | Iterable[str] | None = None,
           states: Mapping[str, str] | Iterable[str] | None = None, files: Iterable[str | Path] = (),
           backbone: bool = True) -> MolecularSystem:
    """A copy of ``system`` with further coordinates and states registered (the system is unchanged).

    Parameters
    ----------
    system : MolecularSystem
    coordinates : mapping NAME -> EXPR, or iterable of ``"NAME:EXPR"`` texts, optional
    states : mapping NAME -> CONDITION, or iterable of ``"NAME:CONDITION"`` texts, optional
        Conditions may use the coordinates defined here and in ``files``.
    files : iterable of paths
        TOML state files (`read_state_file`), read first.
    backbone : bool
        Also register `backbone_definitions` (``phi_R``, ``psi_R`` and the basins ``alphaR_R``,
        ``beta_R``, ``alphaL_R``) where the system has no entry of that name.

    Returns
    -------
    MolecularSystem
        A shallow copy with merged ``reaction_coordinates`` and ``states``.

    Raises
    ------
    CoordinateError
        A bad definition, or a name the system (or an earlier definition) already uses.

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> ala = define(bgs.load("alanine_dipeptide"), states=["A:phi:2 in (0, 2.2)"])
    >>> sorted(ala.states)
    ['A', 'C7ax', 'C7eq', 'alphaL_2', 'alphaR_2', 'beta_2']
    """
    rcs, sts = dict(system.reaction_coordinates), dict(system.states)
    if backbone:
        more_rcs, more_states = backbone_definitions(system)
        rcs.update({k: v for k, v in more_rcs.items() if k not in rcs})
        sts.update({k: v for k, v in more_states.items() if k not in sts})
    own = Definitions()
    for path in files:
        read = read_state_file(path, system, extra={**rcs, **own.coordinates})
        _merge(own.coordinates, read.coordinates, rcs, "coordinate", path)
        _merge(own.states, read.states, sts, "state", path)
    for name, expression in _pairs(coordinates, "coordinate"):
        _check_name(name, "coordinate")
        rc = coordinate(system, expression, name=name, extra={**rcs, **own.coordinates})
        _merge(own.coordinates, {name: rc}, rcs, "coordinate", "--coordinate")
    for name, condition in _pairs(states, "state"):
        st = state(system, name, condition, extra={**rcs, **own.coordinates})
        _merge(own.states, {name: st}, sts, "state", "--state")
    out = copy.copy(system)
    out.reaction_coordinates = {**rcs, **own.coordinates}
    out.states = {**sts, **own.states}
    return out


def _pairs(entries, what: str) -> list[tuple[str, str]]:
    if entries is None:
        return []
    if isinstance(entries, Mapping):
        return list(entries.items())
    if isinstance(entries, str):
        raise CoordinateError(f"give the {what}s as a list of NAME:... texts or a mapping, not one text")
    example = "C7ax:phi:2 in (0, 2.2)" if what == "state" else "ends:distance:1/CA,4/CA"
    return [_split_option(text, what, example) for text in entries]


def _merge(into: dict, new: dict, system_entries: dict, what: str, source) -> None:
    for name, value in new.items():
        if name in system_entries or name in into:
            raise CoordinateError(f"{source}: {what} {name!r} is already defined (by the system or an earlier "
                                  f"definition); choose another name")
        into[name] = value
