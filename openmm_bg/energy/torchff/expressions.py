"""OpenMM (Lepton) algebraic expressions as torch functions.

A small recursive-descent parser for the expression syntax of OpenMM's custom forces:
numbers, variables, the operators ``+ - * / ^`` (``^`` binds tighter than unary minus and is
right-associative), unary minus, function calls, and ``;``-separated intermediate
definitions (``"k*d^2; d = r - r0"``; a definition may use definitions that follow it).
The parsed expression evaluates on python floats and torch tensors alike, with broadcasting,
so that per-pair constants of shape ``[n_pairs]`` combine with batched distances of shape
``[batch, n_pairs]``; gradients come from autograd.

Supported functions: ``sqrt exp log sin cos sec csc tan cot asin acos atan atan2 sinh cosh tanh
erf erfc step delta square cube recip select min max abs floor ceil``. ``step(x)`` is 1 for
``x >= 0``, ``delta(x)`` is 1 for ``x == 0`` and ``select(x, a, b)`` is ``a`` where ``x != 0``, as
in Lepton. Callers may add functions (tabulated functions, ``distance(p1, p2)``...).

Examples
--------
>>> import torch
>>> e = Expression("k*d^2; d = r - r0")
>>> sorted(e.variables)
['k', 'r', 'r0']
>>> float(e.evaluate({"k": 2.0, "r": torch.tensor(1.5), "r0": 1.0}))
0.5
>>> Expression("-x^2").evaluate({"x": 3.0})
-9.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["Expression", "ExpressionError", "FUNCTIONS", "parse"]


class ExpressionError(ValueError):
    """An expression that cannot be parsed or translated."""


# --------------------------------------------------------------------------------------------
# AST: ("num", value) | ("var", name) | ("neg", a) | ("op", "+", a, b) | ("call", name, (args,))

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[-+*/^(),]))"
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"cannot parse {text!r} at position {pos}: {text[pos:pos + 10]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if tok[0] is None or (value is not None and tok[1] != value):
            raise ExpressionError(f"in {self.text!r}: expected {value or 'a token'}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self):
        node = self.sum()
        if self.i != len(self.tokens):
            raise ExpressionError(f"in {self.text!r}: unexpected {self.peek()[1]!r}")
        return node

    def sum(self):
        node = self.product()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            node = ("op", op, node, self.product())
        return node

    def product(self):
        node = self.unary()
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            node = ("op", op, node, self.unary())
        return node

    def unary(self):
        if self.peek()[1] == "-":
            self.take()
            return ("neg", self.unary())
        if self.peek()[1] == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek()[1] == "^":
            self.take()
            return ("op", "^", base, self.unary())  # right-associative, allows x^-2
        return base

    def atom(self):
        kind, value = self.take()
        if kind == "num":
            return ("num", float(value))
        if kind == "name":
            if self.peek()[1] == "(":
                self.take("(")
                args = [self.sum()]
                while self.peek()[1] == ",":
                    self.take(",")
                    args.append(self.sum())
                self.take(")")
                return ("call", value, tuple(args))
            return ("var", value)
        if value == "(":
            node = self.sum()
            self.take(")")
            return node
        raise ExpressionError(f"in {self.text!r}: unexpected {value!r}")


def parse(text: str):
    """Parse one expression (no ``;``) into a tuple AST."""
    return _Parser(text).parse()


# --------------------------------------------------------------------------------------------
# functions


def _is_tensor(*args) -> bool:
    return any(isinstance(a, torch.Tensor) for a in args)


def _unary(tfn: Callable, mfn: Callable) -> Callable:
    def f(x):
        return tfn(x) if isinstance(x, torch.Tensor) else mfn(x)
    return f


def _step(x):
    if isinstance(x, torch.Tensor):
        return (x >= 0).to(x.dtype)
    return 1.0 if x >= 0 else 0.0


def _delta(x):
    if isinstance(x, torch.Tensor):
        return (x == 0).to(x.dtype)
    return 1.0 if x == 0 else 0.0


def _as_tensor_like(value, *others):
    ref = next(o for o in others if isinstance(o, torch.Tensor))
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=ref.dtype,
                                                                          device=ref.device)


def _select(c, a, b):
    if not _is_tensor(c, a, b):
        return a if c != 0 else b
    if not isinstance(c, torch.Tensor):
        return a if c != 0 else b
    ref = a if isinstance(a, torch.Tensor) else b if isinstance(b, torch.Tensor) else c
    if not isinstance(a, torch.Tensor):
        a = torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
    if not isinstance(b, torch.Tensor):
        b = torch.as_tensor(b, dtype=ref.dtype, device=ref.device)
    return torch.where(c != 0, a, b)


def _min(a, b):
    if not _is_tensor(a, b):
        return min(a, b)
    if not isinstance(a, torch.Tensor):
        return torch.clamp(b, max=a)
    if not isinstance(b, torch.Tensor):
        return torch.clamp(a, max=b)
    return torch.minimum(a, b)


def _max(a, b):
    if not _is_tensor(a, b):
        return max(a, b)
    if not isinstance(a, torch.Tensor):
        return torch.clamp(b, min=a)
    if not isinstance(b, torch.Tensor):
        return torch.clamp(a, min=b)
    return torch.maximum(a, b)


def _atan2(y, x):
    if not _is_tensor(y, x):
        return math.atan2(y, x)
    return torch.atan2(_as_tensor_like(y, y, x), _as_tensor_like(x, y, x))


def _recip(x):
    return 1.0 / x


#: Built-in functions: name -> (number of arguments, callable on floats and tensors).
FUNCTIONS: dict[str, tuple[int, Callable]] = {
    "sqrt": (1, _unary(torch.sqrt, math.sqrt)),
    "exp": (1, _unary(torch.exp, math.exp)),
    "log": (1, _unary(torch.log, math.log)),
    "sin": (1, _unary(torch.sin, math.sin)),
    "cos": (1, _unary(torch.cos, math.cos)),
    "sec": (1, lambda x: 1.0 / (torch.cos(x) if isinstance(x, torch.Tensor) else math.cos(x))),
    "csc": (1, lambda x: 1.0 / (torch.sin(x) if isinstance(x, torch.Tensor) else math.sin(x))),
    "tan": (1, _unary(torch.tan, math.tan)),
    "cot": (1, lambda x: 1.0 / (torch.tan(x) if isinstance(x, torch.Tensor) else math.tan(x))),
    "asin": (1, _unary(torch.asin, math.asin)),
    "acos": (1, _unary(torch.acos, math.acos)),
    "atan": (1, _unary(torch.atan, math.atan)),
    "atan2": (2, _atan2),
    "sinh": (1, _unary(torch.sinh, math.sinh)),
    "cosh": (1, _unary(torch.cosh, math.cosh)),
    "tanh": (1, _unary(torch.tanh, math.tanh)),
    "erf": (1, _unary(torch.special.erf, math.erf)),
    "erfc": (1, _unary(torch.special.erfc, math.erfc)),
    "step": (1, _step),
    "delta": (1, _delta),
    "square": (1, lambda x: x * x),
    "cube": (1, lambda x: x * x * x),
    "recip": (1, _recip),
    "select": (3, _select),
    "min": (2, _min),
    "max": (2, _max),
    "abs": (1, _unary(torch.abs, abs)),
    "floor": (1, _unary(torch.floor, math.floor)),
    "ceil": (1, _unary(torch.ceil, math.ceil)),
}


def _power(a, b):
    if isinstance(b, float) and b.is_integer() and abs(b) <= 8:
        n = int(b)
        if n == 0:
            return torch.ones_like(a) if isinstance(a, torch.Tensor) else 1.0
        result = a
        for _ in range(abs(n) - 1):
            result = result * a
        return 1.0 / result if n < 0 else result
    if not _is_tensor(a, b):
        try:
            return math.pow(a, b)
        except ValueError:  # e.g. a negative base with a fractional exponent, as C's pow
            return math.nan
        except OverflowError:
            return math.inf
    if isinstance(a, torch.Tensor):
        return torch.pow(a, b)
    return torch.pow(torch.as_tensor(a, dtype=b.dtype, device=b.device), b)


_BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "^": _power,
}


def _variables(node, out: set[str]) -> None:
    kind = node[0]
    if kind == "var":
        out.add(node[1])
    elif kind == "neg":
        _variables(node[1], out)
    elif kind == "op":
        _variables(node[2], out)
        _variables(node[3], out)
    elif kind == "call":
        for arg in node[2]:
            _variables(arg, out)


def _functions(node, out: set[str]) -> None:
    kind = node[0]
    if kind == "neg":
        _functions(node[1], out)
    elif kind == "op":
        _functions(node[2], out)
        _functions(node[3], out)
    elif kind == "call":
        out.add(node[1])
        for arg in node[2]:
            _functions(arg, out)


class Expression:
    """A parsed OpenMM expression with its intermediate definitions.

    Parameters
    ----------
    text : str
        Expression as OpenMM writes it, e.g. ``"0.5*k*(r-r0)^2"`` or ``"a*b; b = sqrt(r)"``.

    Attributes
    ----------
    variables : set of str
        Free variables (names not defined inside the expression).
    functions : set of str
        Names of all functions called.

    Examples
    --------
    >>> Expression("select(step(x), x, -x); x = y - 1").evaluate({"y": 0.5})
    0.5
    """

    def __init__(self, text: str):
        self.text = text
        parts = [p.strip() for p in text.split(";")]
        parts = [p for p in parts if p]
        if not parts:
            raise ExpressionError(f"empty expression {text!r}")
        self.main = parse(parts[0])
        self.definitions: dict[str, Any] = {}
        for part in parts[1:]:
            if "=" not in part:
                raise ExpressionError(f"in {text!r}: definition without '=': {part!r}")
            name, rhs = part.split("=", 1)
            name = name.strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ExpressionError(f"in {text!r}: bad name {name!r}")
            self.definitions[name] = parse(rhs)
        self._check_cycles()
        self._simplify()
        used: set[str] = set()
        self._collect(self.main, used, set())
        self.variables = used
        funcs: set[str] = set()
        _functions(self.main, funcs)
        for node in self.definitions.values():
            _functions(node, funcs)
        self.functions = funcs

    def _check_cycles(self) -> None:
        state: dict[str, int] = {}

        def visit(name):
            if state.get(name) == 1:
                raise ExpressionError(f"in {self.text!r}: definition of {name!r} refers to itself")
            if state.get(name) == 2:
                return
            state[name] = 1
            deps: set[str] = set()
            _variables(self.definitions[name], deps)
            for dep in deps:
                if dep in self.definitions:
                    visit(dep)
            state[name] = 2

        for name in self.definitions:
            visit(name)

    def _collect(self, node, out: set[str], seen: set[str]) -> None:
        names: set[str] = set()
        _variables(node, names)
        for name in names:
            if name in self.definitions:
                if name not in seen:
                    seen.add(name)
                    self._collect(self.definitions[name], out, seen)
            else:
                out.add(name)

    # constant folding: definitions that reduce to numbers are substituted
    def _fold(self, node, constants: dict[str, float]):
        kind = node[0]
        if kind == "num":
            return node
        if kind == "var":
            if node[1] in constants:
                return ("num", constants[node[1]])
            return node
        if kind == "neg":
            a = self._fold(node[1], constants)
            return ("num", -a[1]) if a[0] == "num" else ("neg", a)
        if kind == "op":
            a = self._fold(node[2], constants)
            b = self._fold(node[3], constants)
            if a[0] == "num" and b[0] == "num":
                try:
                    return ("num", float(_BINARY[node[1]](a[1], b[1])))
                except (ZeroDivisionError, OverflowError, ValueError):
                    pass  # not foldable (e.g. 1/0): keep the node, torch evaluates it as OpenMM would
            return ("op", node[1], a, b)
        args = tuple(self._fold(a, constants) for a in node[2])
        if node[1] in FUNCTIONS and all(a[0] == "num" for a in args):
            try:
                return ("num", float(FUNCTIONS[node[1]][1](*(a[1] for a in args))))
            except (ZeroDivisionError, OverflowError, ValueError, TypeError):
                pass  # not foldable: keep the call for torch
        return ("call", node[1], args)

    def _simplify(self) -> None:
        constants: dict[str, float] = {}
        changed = True
        while changed:
            changed = False
            for name, node in self.definitions.items():
                if name in constants:
                    continue
                folded = self._fold(node, constants)
                self.definitions[name] = folded
                if folded[0] == "num":
                    constants[name] = folded[1]
                    changed = True
        self.main = self._fold(self.main, constants)
        for name in constants:
            del self.definitions[name]

    def check(self, known_variables, functions: Mapping[str, tuple[int, Callable]] | None = None) -> None:
        """Raise `ExpressionError` for unknown variables, unknown functions or wrong arities."""
        unknown = set(self.variables) - set(known_variables)
        if unknown:
            raise ExpressionError(f"in {self.text!r}: unknown variable(s) {sorted(unknown)}")
        table = dict(FUNCTIONS)
        table.update(functions or {})

        def visit(node):
            if node[0] == "neg":
                visit(node[1])
            elif node[0] == "op":
                visit(node[2])
                visit(node[3])
            elif node[0] == "call":
                if node[1] not in table:
                    raise ExpressionError(f"in {self.text!r}: unsupported function {node[1]!r}")
                if len(node[2]) != table[node[1]][0]:
                    raise ExpressionError(f"in {self.text!r}: {node[1]} takes {table[node[1]][0]} "
                                          f"argument(s), got {len(node[2])}")
                for arg in node[2]:
                    visit(arg)

        visit(self.main)
        for node in self.definitions.values():
            visit(node)

    def evaluate(self, env: Mapping[str, Any],
                 functions: Mapping[str, tuple[int, Callable]] | None = None):
        """Evaluate with variable values from ``env`` (floats or broadcastable tensors).

        Parameters
        ----------
        env : mapping
            Variable name -> python float or torch tensor.
        functions : mapping, optional
            Extra functions, name -> ``(n_args, callable)``.

        Returns
        -------
        float or torch.Tensor
            The value, broadcast over the shapes of the inputs.
        """
        table = FUNCTIONS if not functions else {**FUNCTIONS, **functions}
        memo: dict[str, Any] = {}
        definitions = self.definitions

        def ev(node):
            kind = node[0]
            if kind == "num":
                return node[1]
            if kind == "var":
                name = node[1]
                if name in definitions:
                    if name not in memo:
                        memo[name] = ev(definitions[name])
                    return memo[name]
                try:
                    return env[name]
                except KeyError:
                    raise ExpressionError(f"in {self.text!r}: no value for variable {name!r}") from None
            if kind == "op":
                return _BINARY[node[1]](ev(node[2]), ev(node[3]))
            if kind == "neg":
                return -ev(node[1])
            try:
                fn = table[node[1]][1]
            except KeyError:
                raise ExpressionError(f"in {self.text!r}: unsupported function {node[1]!r}") from None
            return fn(*(ev(a) for a in node[2]))

        return ev(self.main)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"
