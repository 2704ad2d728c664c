"""The package's folders are its layers (README, "How the code is laid out"): every import
of every module, at its top or inside a function, goes to its own folder or one below."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "piunet_dist"
# bottom first; the package's own __init__ and __main__ stand above them all
LAYERS = ["core", "network", "data", "report", "evaluation", "training", "launch"]
TOP = len(LAYERS)
# data uses the challenge's metric and baseline; it knows nothing of the model
FORBIDDEN = {
    "data": (
        "network.model",
        "network.attention",
        "network.pixel_attention_triton",
        "network.weights",
        "network.losses",
    )
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package in the file."""
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_of(source: str, here: str, is_package: bool) -> list[tuple[int, str]]:
    package = here if is_package else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` imports the module x of that package
            names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name == "piunet_dist" or name.startswith("piunet_dist.")]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_folder_of_the_package_is_a_layer():
    folders = {p.parent.name for p in modules() if p.parent != PACKAGE}
    assert folders == set(LAYERS)


def wrong_imports(found: list[tuple[int, str]], here: str) -> list[str]:
    """The imports of module `here` that go upward, or to what its layer must not know."""
    mine = layer(here)
    folder = here.split(".")[1] if mine < TOP else None
    upward = [
        f"line {line}: {name} (upward)"
        for line, name in found
        if layer(name) > mine or (name == "piunet_dist" and mine < TOP)
    ]
    banned = [
        f"line {line}: {name} (not for {folder}/)"
        for line, name in found
        for prefix in FORBIDDEN.get(folder, ())
        if name.startswith(f"piunet_dist.{prefix}")
    ]
    return upward + banned


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_upward(path):
    wrong = wrong_imports(imports(path), module_name(path))
    assert not wrong, f"{module_name(path)}: {wrong}"


def test_no_import_circle():
    graph = {module_name(p): {name for _, name in imports(p)} for p in modules()}
    graph = {m: {n for n in targets if n in graph and n != m} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_check_finds_upward_and_forbidden_imports_at_any_depth():
    source = (
        "from ..core.errors import UserError\n"
        "from . import probav\n"
        "def f():\n"
        "    from ..training.trainer import Trainer\n"
        "    import piunet_dist.network.model\n"
    )
    found = imports_of(source, "piunet_dist.data.fake", is_package=False)
    assert [n for _, n in found] == [
        "piunet_dist.core.errors",
        "piunet_dist.data.probav",
        "piunet_dist.training.trainer",
        "piunet_dist.network.model",
    ]
    assert wrong_imports(found, "piunet_dist.data.fake") == [
        "line 4: piunet_dist.training.trainer (upward)",
        "line 5: piunet_dist.network.model (not for data/)",
    ]
    assert wrong_imports(found, "piunet_dist.launch.fake") == []
