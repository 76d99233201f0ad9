"""`adatp/` stays one way down: every module imports alone, none imports another module's `_private` name, and the
module import graph has no circle (models/base <- models/<family> <- kinds, layers, scoring, state <- prefix <-
pruned_lm; video/decode <- video/base <- video/<family> <- video)."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "adatp"
MODULES = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                 for path in PACKAGE.rglob("*.py"))


def _imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported adatp module, names taken from it) for each import in `module`, lazy ones included."""
    path = ROOT / pathlib.Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adatp"):
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("adatp")]
    return found


def test_the_package_has_the_modules_of_the_design():
    for name in ("adatp.models.base", "adatp.kinds", "adatp.layers", "adatp.scoring", "adatp.state",
                 "adatp.prefix", "adatp.pruned_lm", "adatp.models.qwen3_5", "adatp.video", "adatp.video.decode",
                 "adatp.video.base", "adatp.video.llava_onevision", "adatp.video.qwen"):
        assert name in MODULES


def test_no_private_name_is_imported_from_another_module():
    offenders = [(module, source, name) for module in MODULES for source, names in _imports(module)
                 for name in names if name.startswith("_")]
    assert offenders == []


def test_the_import_graph_has_no_circle():
    graph = {module: set() for module in MODULES}
    for module in MODULES:
        for source, names in _imports(module):
            # `from adatp import prefix` imports the module adatp.prefix, not the package's __init__.
            targets = [f"{source}.{name}" for name in names if f"{source}.{name}" in graph] or [source]
            graph[module].update(target for target in targets if target in graph and target != module)
    graph["adatp"] = set()  # the package re-exports everything: importing it is the top, not a layer
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import circle: {' -> '.join([*path, module])}"
        state[module] = "open"
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        state[module] = "done"

    for module in MODULES:
        visit(module, [])

    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module == goal:
                return True
            if module not in seen:
                seen.add(module)
                todo += graph[module]
        return False

    # The seam runs one way: the contract below the families, below the shared layers, below prefix and forward.
    for upper, lower in [("adatp.models.qwen3_5", "adatp.models.base"), ("adatp.layers", "adatp.models.base"),
                         ("adatp.prefix", "adatp.layers"), ("adatp.prefix", "adatp.scoring"),
                         ("adatp.pruned_lm", "adatp.prefix"), ("adatp.pruned_lm", "adatp.state")]:
        assert reaches(upper, lower) and not reaches(lower, upper), (upper, lower)
    assert graph["adatp.models.base"] <= {"adatp.config"}
    # Video input: decoding below the shared steps, below one module per family; the families never meet.
    for upper, lower in [("adatp.video.base", "adatp.video.decode"), ("adatp.video.qwen", "adatp.video.base"),
                         ("adatp.video.llava_onevision", "adatp.video.base"), ("adatp.video", "adatp.video.qwen"),
                         ("adatp.video", "adatp.video.llava_onevision")]:
        assert reaches(upper, lower) and not reaches(lower, upper), (upper, lower)
    assert not reaches("adatp.video.qwen", "adatp.video.llava_onevision")
    assert not reaches("adatp.video.llava_onevision", "adatp.video.qwen")
    assert graph["adatp.video.decode"] == set()


def test_each_module_imports_alone():
    """Each module imported first, in a fresh adatp (torch and transformers stay loaded: they are not ours)."""
    script = f"""
import importlib, sys, torch, transformers
for module in {MODULES!r}:
    for name in [name for name in sys.modules if name == "adatp" or name.startswith("adatp.")]:
        del sys.modules[name]
    importlib.import_module(module)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
