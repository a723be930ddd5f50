"""The layering rule, read from the source with ast: who may import ``secret_audit._internal``.

- Public modules never import ``_internal``; the only doors into it are the package root, the two
  instrumentor packages, whose job is to start the private pipeline, and the CLI, whose spool
  commands read and replay the producer's spool.
- Nothing under ``secret_audit.store`` imports ``_internal``: the store shares only the public contract.
- ``_internal`` imports no door and nothing of the store, so the layers cannot loop.
- ``secret_audit.contract`` imports nothing of this package: it is the bottom layer.

Every import counts: at module level or inside a function, and by name (``importlib.import_module``,
``__import__``); an import by a name the source does not spell out counts as private.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "secret_audit"
# The CLI is a door too: its spool commands read and replay the producer's own spool.
DOORS = {"secret_audit", "secret_audit.redis", "secret_audit.gcp", "secret_audit.cli"}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# What a dynamic import whose module name is not a literal counts as: it could be anything.
COMPUTED = "secret_audit._internal.<computed name>"
_BY_NAME = {"import_module", "__import__"}  # importlib.import_module(name, package), __import__(name)


def _relative(name: str, package: str) -> str:
    """``importlib.import_module``'s resolution of a leading-dot name against ``package``."""
    level = len(name) - len(name.lstrip("."))
    anchor = package.split(".")
    anchor = anchor[: len(anchor) - level + 1]
    return ".".join([*anchor, name[level:]] if name[level:] else anchor)


def _by_name(node: ast.Call) -> str | None:
    """The module an ``import_module`` or ``__import__`` call imports; COMPUTED when not a literal."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in _BY_NAME:
        return None
    literal = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
               for a in node.args[:2]]
    if not literal or literal[0] is None:
        return COMPUTED
    if literal[0].startswith("."):
        return _relative(literal[0], literal[1]) if len(literal) > 1 and literal[1] else COMPUTED
    return literal[0]


def imports(path: Path, src: Path = SRC) -> set[str]:
    """Every module the file imports, at any depth (function-level imports too), made absolute.

    Imports by name count too: ``importlib.import_module`` and ``__import__`` with a literal name, and
    COMPUTED for one whose name the source does not spell out.
    """
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and (target := _by_name(node)) is not None:
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def private(name: str) -> bool:
    return name == "secret_audit._internal" or name.startswith("secret_audit._internal.")


def test_the_parser_sees_imports_of_every_shape(tmp_path):
    pkg = tmp_path / "secret_audit" / "store"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("import secret_audit._internal.a\nfrom .. import _internal\nfrom .._internal.b import c\n"
                 "def f():\n    from secret_audit._internal import d\n")
    found = imports(f, tmp_path)
    assert {"secret_audit._internal.a", "secret_audit._internal", "secret_audit._internal.b",
            "secret_audit._internal.d"} <= found


def test_the_parser_sees_imports_by_name_too(tmp_path):
    pkg = tmp_path / "secret_audit" / "store"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("import importlib\nfrom importlib import import_module\n"
                 "def f():\n    importlib.import_module('secret_audit._internal.e')\n"
                 "    import_module('.._internal.f', 'secret_audit.store')\n"
                 "    __import__('secret_audit._internal.g')\n"
                 "    importlib.import_module(name)\n")
    found = imports(f, tmp_path)
    assert {"secret_audit._internal.e", "secret_audit._internal.f", "secret_audit._internal.g", COMPUTED} <= found
    assert private(COMPUTED)  # a name the source does not spell out could be anything: it counts as private


def test_the_walk_found_the_package():
    assert {"secret_audit.contract", "secret_audit.store.verify", "secret_audit._internal.pipeline"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not private(n) and n not in DOORS))
def test_public_modules_never_import_internal(name):
    assert not {i for i in MODULES[name] if private(i)}, f"{name} imports a private module"


def test_the_doors_are_only_the_root_the_instrumentors_and_the_cli():
    doors = {n for n, found in MODULES.items() if not private(n) and any(private(i) for i in found)}
    assert doors <= DOORS


@pytest.mark.parametrize("name", sorted(n for n in MODULES if private(n)))
def test_internal_never_imports_a_door_or_the_store(name):
    bad = {i for i in MODULES[name] if i in DOORS - {"secret_audit"} or i.startswith("secret_audit.store")
           or i.startswith(("secret_audit.redis.", "secret_audit.gcp.", "secret_audit.cli"))}
    assert not bad, f"{name} imports {sorted(bad)}"


def test_the_contract_is_the_bottom_layer():
    assert not {i for i in MODULES["secret_audit.contract"] if i.startswith("secret_audit")}
