"""The package's floors: every import (module level and inside functions) points down the layer
order or stays within its own subpackage, and no two modules import each other in a circle."""
import ast
from pathlib import Path

import medusa

PACKAGE = Path(medusa.__file__).parent
# lower first; a module may import its own layer and the layers before it
LAYERS = ["runtime", "kernels", "model", "heads", "decoding", "data", "app",
          ("training", "vocab", "bench"), "cli"]


def rank(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for i, layer in enumerate(LAYERS):
        if top == layer or (isinstance(layer, tuple) and top in layer):
            return i
    return len(LAYERS)   # medusa/__init__.py, medusa/__main__.py: above everything


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path):
    """(line, module) of every medusa module `path` imports, wherever the import stands."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("medusa"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medusa"):
            for alias in node.names:   # `from medusa.x import y`: y may itself be a module
                sub = f"{node.module}.{alias.name}"
                yield node.lineno, sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() \
                    or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else node.module


def graph():
    return {module_name(p): list(imported(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def test_imports_point_down_the_layers():
    wrong = [f"{mod} (line {line}) imports {target}"
             for mod, targets in graph().items() for line, target in targets
             if rank(target) > rank(mod) or (rank(target) == rank(mod) and isinstance(LAYERS[rank(mod)], tuple)
                                            and target.split(".")[1] != mod.split(".")[1])]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_circles():
    edges = {mod: {t for _, t in targets if t != mod} for mod, targets in graph().items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for mod in sorted(edges):
        if mod not in state:
            visit(mod)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from medusa.cli import generate\n")
    assert [t for _, t in imported(source)] == ["medusa.cli.generate"]


def test_the_architecture_table_lists_every_module():
    """docs/architecture.md's module table names exactly the package's modules (it cannot drift)."""
    import re

    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(medusa/[\w/]+\.py)` \|", doc, flags=re.M))
    present = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert listed == present, f"missing from the table: {sorted(present - listed)}; gone: {sorted(listed - present)}"
