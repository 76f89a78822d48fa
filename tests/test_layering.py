"""The package's layering: every import in ``product_cnn/`` goes to a layer it may use (a partial
order: inference and serve stand beside training and evaluation, not above them), never in a
circle. Parsed from the source (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "product_cnn"
# each layer and the layers it may import besides its own (lowest first)
MAY_USE = {
    "base": set(),
    "data": {"base"},
    "confidence": {"base"},
    "models": {"base", "data", "confidence"},
    "training": {"base", "data", "confidence", "models"},
    "evaluation": {"base", "data", "confidence", "models", "training"},
    "inference": {"base", "data", "confidence", "models"},  # never training or evaluation
    "serve": {"base", "data", "confidence", "models", "inference"},
    "tasks": {"base", "data", "confidence", "models", "training", "evaluation", "inference", "serve"},
}
LAYERS = list(MAY_USE)
BASE = {"errors", "atomic", "config", "runtime"}  # what every layer may use
TOP = {"tasks", "cli"}  # the recipes and the entry points' harness: above everything


def layer_of(module: str) -> str:
    """``product_cnn.training.module`` -> ``training``; the top-level helpers are ``base``."""
    parts = module.split(".")
    if len(parts) < 2:
        return "base"
    top = parts[1]
    if top in BASE:
        return "base"
    if top in TOP:
        return "tasks"
    return top


def imports_of(path: Path, root: Path = REPO) -> list[tuple[str, int]]:
    """(imported product_cnn module, line) for every import statement in ``path`` under ``root``."""
    module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("product_cnn")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("product_cnn"):
                # `from product_cnn.training import module` imports product_cnn.training.module
                found += [(f"{name}.{a.name}" if root.joinpath(*name.split("."), f"{a.name}.py").exists()
                           else name, node.lineno) for a in node.names]
    return found


def module_graph() -> dict[str, list[tuple[str, int]]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = imports_of(path)
    return graph


def test_every_known_layer_is_a_folder_or_a_base_module():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert folders == set(LAYERS) - {"base", "tasks"}, "a new sub-package needs its place in LAYERS"
    assert modules == BASE | TOP, "the top level holds only what every layer uses, tasks.py and cli.py"


def forbidden_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """``module:line imports target (layer -> layer)`` for every import outside :data:`MAY_USE`."""
    found = []
    for module, imports in graph.items():
        here = layer_of(module)
        for target, line in imports:
            there = layer_of(target)
            if there != here and there not in MAY_USE[here]:
                found.append(f"{module}:{line} imports {target} ({here} -> {there})")
    return found


def test_every_import_goes_to_a_layer_it_may_use():
    bad = forbidden_imports(module_graph())
    rules = "; ".join(f"{k} -> {', '.join(sorted(v)) or 'nothing'}" for k, v in MAY_USE.items())
    assert not bad, f"imports must follow the layers ({rules}):\n" + "\n".join(bad)


def test_the_rules_form_a_partial_order():
    """No two layers may use each other, directly or through others (else "beside" means nothing)."""
    for layer in LAYERS:
        reach, todo = set(), list(MAY_USE[layer])
        while todo:
            nxt = todo.pop()
            if nxt not in reach:
                reach.add(nxt)
                todo += MAY_USE[nxt]
        assert layer not in reach, f"{layer} can reach itself through {sorted(reach)}"
    assert "training" not in MAY_USE["inference"] | MAY_USE["serve"]
    assert "evaluation" not in MAY_USE["inference"] | MAY_USE["serve"]


def _fake_package(root: Path, folders: tuple[str, ...], module: str) -> Path:
    """``root/product_cnn/<folder>/`` for each folder and an empty ``<module>.py`` in the second."""
    for folder in folders:
        (root / "product_cnn" / folder).mkdir(parents=True)
    (root / "product_cnn" / folders[1] / f"{module}.py").write_text("")
    return root / "product_cnn" / folders[0] / "bad.py"


def test_the_checker_sees_inference_importing_training(tmp_path):
    """The rule that keeps inference beside training fails on such an import, lazy ones too."""
    bad = _fake_package(tmp_path, ("inference", "training", "evaluation"), "module")
    bad.write_text("def f():\n    from product_cnn.training.module import ProductClassifier\n"
                   "from product_cnn.evaluation import reports\n")
    found = forbidden_imports({"product_cnn.inference.bad": imports_of(bad, tmp_path)})
    assert sorted(f.rsplit(" (", 1)[1] for f in found) == ["inference -> evaluation)",
                                                           "inference -> training)"]


def test_no_import_cycles():
    modules = module_graph()
    graph = {m: {t for t, _ in imps if t in modules} for m, imps in modules.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend([*stack[stack.index(nxt):], nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*stack, nxt]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if state.get(start) is None and visit(start, [start]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The parser above finds an upward import written each way Python allows, lazy ones too."""
    bad = _fake_package(tmp_path, ("data", "evaluation", "training", "inference"), "reports")
    bad.write_text("import product_cnn.training.module\n"
                   "from product_cnn.evaluation import reports\n"
                   "from ..inference import export\n"
                   "def f():\n    from product_cnn.inference.predictor import Predictor\n")
    found = [t for t, _ in imports_of(bad, tmp_path)]
    assert found == ["product_cnn.training.module", "product_cnn.evaluation.reports",
                     "product_cnn.inference", "product_cnn.inference.predictor"]
    assert [layer_of(t) not in MAY_USE["data"] for t in found] == [True] * 4
