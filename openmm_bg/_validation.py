"""Checks of scalar arguments at public boundaries: one `ValueError` naming the argument and its range.

Every public function checks its arguments before doing any work, and says what is allowed.
These helpers return the value converted (``float`` or ``int``) so that a check and its
conversion are one line::

    n_frames = positive_int("n_frames", n_frames)
    friction = non_negative("friction", friction, "1/ps")
    temperature = system.temperature if temperature is None else temperature_kelvin("temperature", temperature)

``None`` is never accepted here: an optional argument is tested with ``is None`` by the caller
(never by truthiness, which reads 0 as "not given"). Booleans are refused where a number is
expected, and NaN and infinity are refused everywhere.

Examples
--------
>>> positive("timestep", 0.002, "ps")
0.002
>>> positive_int("n_frames", 1e3)
1000
>>> non_negative("friction", 0)
0.0
>>> temperature_kelvin("temperature", 0)
Traceback (most recent call last):
...
ValueError: temperature must be a positive, finite temperature in K, got 0
"""

from __future__ import annotations

import math
import numbers

__all__ = ["number", "positive", "non_negative", "positive_int", "non_negative_int", "integer",
           "temperature_kelvin"]


def _describe(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _unit(unit: str) -> str:
    return f" ({unit})" if unit else ""


def number(name: str, value, unit: str = "") -> float:
    """``value`` as a finite float; `ValueError` naming ``name`` otherwise.

    Parameters
    ----------
    name : str
        The argument's name, as the user wrote it (``"timestep"``, ``"--stride"``).
    value : object
        Python or numpy number (a 0-d array or one-element sequence is not accepted).
    unit : str
        Unit shown in the message, e.g. ``"ps"``.

    Examples
    --------
    >>> number("x", -2)
    -2.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number{_unit(unit)}, got {_describe(value)} "
                         f"({type(value).__name__})")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite{_unit(unit)}, got {_describe(value)}")
    return out


def positive(name: str, value, unit: str = "") -> float:
    """``value`` as a float > 0 and finite.

    Examples
    --------
    >>> positive("timestep", -1.0, "ps")
    Traceback (most recent call last):
    ...
    ValueError: timestep must be positive and finite (ps), got -1.0
    """
    out = _real(name, value, unit, "positive and finite")
    if not out > 0:
        raise ValueError(f"{name} must be positive and finite{_unit(unit)}, got {_describe(value)}")
    return out


def non_negative(name: str, value, unit: str = "") -> float:
    """``value`` as a float >= 0 and finite (0 is allowed).

    Examples
    --------
    >>> non_negative("friction", 0.5, "1/ps")
    0.5
    """
    out = _real(name, value, unit, ">= 0 and finite")
    if not out >= 0:
        raise ValueError(f"{name} must be >= 0 and finite{_unit(unit)}, got {_describe(value)}")
    return out


def _real(name: str, value, unit: str, what: str) -> float:
    try:
        return number(name, value, unit)
    except ValueError:
        raise ValueError(f"{name} must be {what}{_unit(unit)}, got {_describe(value)}") from None


def integer(name: str, value, low: int | None = None) -> int:
    """``value`` as an int (integral floats such as ``1e4`` are accepted), at least ``low`` if given.

    Examples
    --------
    >>> integer("seed", 3)
    3
    >>> integer("seed", 2.5)
    Traceback (most recent call last):
    ...
    ValueError: seed must be an integer, got 2.5
    """
    what = "an integer" if low is None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {what}, got {_describe(value)} ({type(value).__name__})")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        f = float(value)
        if not (math.isfinite(f) and f == int(f)):
            raise ValueError(f"{name} must be {what}, got {_describe(value)}")
        out = int(f)
    if low is not None and out < low:
        raise ValueError(f"{name} must be {what}, got {_describe(value)}")
    return out


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1 (counts: frames, steps, samples).

    Examples
    --------
    >>> positive_int("stride", 0)
    Traceback (most recent call last):
    ...
    ValueError: stride must be an integer >= 1, got 0
    """
    return integer(name, value, low=1)


def non_negative_int(name: str, value) -> int:
    """``value`` as an int >= 0 (e.g. equilibration steps, seeds).

    Examples
    --------
    >>> non_negative_int("equilibration_steps", 0)
    0
    """
    return integer(name, value, low=0)


def open_fraction(name: str, value, hint: str = "") -> float:
    """``value`` as a float strictly between 0 and 1 (target ESS fractions, acceptance rates).

    ``hint`` is appended to the message, e.g. why an end point is excluded.

    Examples
    --------
    >>> open_fraction("target_cess", 1.0, " (1 would never let beta grow)")
    Traceback (most recent call last):
    ...
    ValueError: target_cess must be in (0, 1) (1 would never let beta grow), got 1.0
    """
    out = _real(name, value, "", f"in (0, 1){hint}")
    if not 0.0 < out < 1.0:
        raise ValueError(f"{name} must be in (0, 1){hint}, got {_describe(value)}")
    return out


def temperature_kelvin(name: str, value) -> float:
    """A temperature in K: positive and finite; an OpenMM ``Quantity`` is converted to kelvin.

    Zero, negative, NaN and infinite temperatures are refused. A caller with an optional
    temperature tests ``value is None`` first and substitutes its default.

    Examples
    --------
    >>> temperature_kelvin("temperature", 310)
    310.0
    """
    if hasattr(value, "value_in_unit"):
        import openmm.unit as unit

        try:
            value = value.value_in_unit(unit.kelvin)
        except TypeError as err:
            raise ValueError(f"{name} must be a temperature in K, got {value}") from err
    out = _real(name, value, "", "a positive, finite temperature in K")
    if not out > 0:
        raise ValueError(f"{name} must be a positive, finite temperature in K, got {_describe(value)}")
    return out


def one_line(err: BaseException, limit: int = 300) -> str:
    """The message of ``err`` on one line (whitespace runs, newlines included, become one space), at most
    ``limit`` characters: for errors that quote another library's (often multi-line) message.

    Examples
    --------
    >>> one_line(ValueError("invalid load key,\\n  'x'."))
    "invalid load key, 'x'."
    """
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
