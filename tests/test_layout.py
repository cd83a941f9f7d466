"""The package's shape: no import cycles, the method apart from its users, the README's
layout section naming every folder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "llink").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = path
    return mods


def _top_level_imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """llink modules imported when ``path`` is imported (module body and its ``if`` blocks,
    not functions; ``if TYPE_CHECKING`` blocks are skipped). ``from pkg import sub`` names
    the submodule, not the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            nodes += node.body + node.orelse
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llink"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
            found |= subs or ({node.module} & mods.keys())
    return found


def test_no_module_imports_one_that_imports_it_back():
    mods = _modules()
    graph = {m: _top_level_imports(p, mods) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_method_imports_only_the_backbones_and_storage():
    mods = _modules()
    allowed = ("llink.method", "llink.backbones", "llink.storage", "llink.config")
    for name, path in mods.items():
        if name.startswith("llink.method"):
            for dep in _top_level_imports(path, mods):
                assert dep.startswith(allowed), f"{name} imports {dep}"


def test_the_readme_layout_names_every_folder():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"^\s+([a-z_]+)/", block, flags=re.M))
    folders = {p.name for p in (SRC / "llink").iterdir()
               if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders <= named, f"README layout misses {sorted(folders - named)}"
    for py in (SRC / "llink" / "method").glob("*.py"):
        if py.name != "__init__.py":
            assert py.name in block, f"README layout misses method/{py.name}"
