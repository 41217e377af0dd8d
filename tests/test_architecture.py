"""Dependencies point down: no module of openmm_bg imports from a higher layer (``openmm_bg/_layers.py``).

Every ``import`` and ``from ... import`` of every module is read with ``ast``, function-level
imports included, so a lazy import cannot hide an upward dependency. The allowed exceptions are
the compatibility hooks named in ``openmm_bg._layers``. The same layer list is checked against
``docs/architecture.md`` so that the document stays honest.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from openmm_bg import _layers

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "openmm_bg"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT):
    """``(line, module, inside __getattr__, marked)`` for every import in the file (absolute names)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source, str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def visit(node, in_getattr: bool):
        for child in ast.iter_child_nodes(node):
            getattr_here = in_getattr or (isinstance(child, ast.FunctionDef) and node is tree
                                          and child.name == "__getattr__")
            if isinstance(child, ast.Import | ast.ImportFrom):
                marked = any(_layers.COMPAT_MARKER in lines[k - 1]
                             for k in range(child.lineno, (child.end_lineno or child.lineno) + 1))
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(base + ([child.module] if child.module else []))
                    # "from . import x" may name a submodule: judge by the submodule
                    targets = [f"{base}.{a.name}" if child.module is None else base for a in child.names]
                else:
                    targets = [child.module]
                for target in targets:
                    yield child.lineno, target, getattr_here, marked
            yield from visit(child, getattr_here)

    yield from visit(tree, False)


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    unknown = set()
    for path in MODULES:
        try:
            _layers.layer_of(module_name(path))
        except KeyError:
            unknown.add(module_name(path))
    assert not unknown, f"modules in no layer of openmm_bg/_layers.py: {sorted(unknown)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_upward_imports(path):
    name = module_name(path)
    if name in _layers.COMPAT_MODULES:
        return
    own = _layers.layer_of(name)
    upward = []
    for line, target, in_getattr, marked in imported_modules(path):
        if target != "openmm_bg" and not target.startswith("openmm_bg."):
            continue
        if _layers.layer_of(target) > own and not (in_getattr or marked):
            upward.append(f"line {line}: {target} (layer {_layers.LAYERS[_layers.layer_of(target)][0]})")
    assert not upward, f"{name} (layer {_layers.LAYERS[own][0]}) imports from higher layers: {upward}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rule is not vacuous: function-level and relative imports are found; __getattr__ is exempt."""
    fake = tmp_path / "openmm_bg" / "flows" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..systems import load\n\ndef f():\n    from ..model import generator\n\n"
                    "def __getattr__(name):\n    from ..apps import plots\n"
                    "from ..md import simulate  # compat: upward import\n")
    found = list(imported_modules(fake, root=tmp_path))
    assert [marked for *_, marked in found] == [False, False, False, True]
    assert [(t, g) for _, t, g, _ in found] == [("openmm_bg.systems", False), ("openmm_bg.model", False),
                                                ("openmm_bg.apps", True), ("openmm_bg.md", False)]


def test_architecture_doc_names_every_layer_and_package():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p for p in _layers.package_names() if f"{p}/" not in doc and f"{p}.py" not in doc]
    assert not missing, f"docs/architecture.md does not name {missing}"
    for planned in _layers.PLANNED:
        assert f"{planned}/" in doc, f"docs/architecture.md does not mention the planned {planned}/ layer"
    # the diagram lists the layers bottom to top in the order of _layers.LAYERS
    diagram = doc.split("```")[1]
    rows = [row for row in diagram.splitlines() if row.strip()]
    positions = []
    for layer, parts in _layers.LAYERS:
        hits = [k for k, row in enumerate(rows) if any(f"{p}/" in row or f"{p}.py" in row for p in parts
                                                       if not p.startswith("_"))]
        assert hits, f"layer {layer} is not in the diagram of docs/architecture.md"
        positions.append(hits[0])
    assert positions == sorted(positions, reverse=True), "the diagram must list the layers top to bottom"


def test_design_doc_exists_with_the_sections_the_code_cites():
    design = (ROOT / "docs" / "design.md").read_text()
    headings = {line.lstrip("#").strip() for line in design.splitlines() if line.startswith("#")}
    cited = {section for path in MODULES
             for section in re.findall(r'docs/design\.md``?,?\s*\(?"([^"]+)"', path.read_text())}
    assert cited, "no module cites a section of docs/design.md"
    assert cited <= headings, f"sections cited but missing in docs/design.md: {sorted(cited - headings)}"
