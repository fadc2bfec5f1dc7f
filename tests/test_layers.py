"""The package reads as layers: errors < io < config < model, data, evaluation < engine < builders < tasks, cli, api.

Every import (module level or inside a function) must go down a layer, or stay inside its own package;
packages of the same layer do not import each other, and no set of modules imports itself in a circle.
"""
import ast
from pathlib import Path

import reid_tao

PACKAGE = Path(reid_tao.__file__).parent
LAYERS = [("errors",), ("io",), ("config",), ("model", "data", "evaluation"), ("engine",), ("builders",),
          ("tasks", "cli", "api"), ("__main__",)]
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool, known: set) -> set:
    """reid_tao modules that module ``name`` imports anywhere in ``source``, relative imports resolved."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name` may name a submodule or an attribute: keep the submodule when it is one.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith("reid_tao.") and target != name:
                found.add(target)
    return found


def import_graph() -> dict:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files) | {"reid_tao"}
    return {name: imported_modules(path.read_text(), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def top_package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_imports_only_go_down_a_layer():
    problems = []
    for module, targets in import_graph().items():
        own = top_package(module)
        if own not in LAYER_OF:
            continue  # the root __init__
        for target in targets:
            other = top_package(target)
            if other == own:
                continue
            if other not in LAYER_OF or LAYER_OF[other] >= LAYER_OF[own]:
                problems.append(f"{module} imports {target}")
    assert not problems, "imports that go up or sideways:\n" + "\n".join(sorted(problems))


def test_no_import_cycles():
    graph = import_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target.startswith(node + "."):
                continue  # a package's __init__ re-exporting its own modules is not a cycle
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_function_level_and_relative_imports():
    # A checker that finds nothing proves nothing: a probe module with imports hidden in a function.
    source = "import torch\n\ndef f():\n    from reid_tao.builders import build_model\n    from ..tasks import train\n"
    known = {"reid_tao.builders", "reid_tao.tasks", "reid_tao.tasks.train", "reid_tao.model", "reid_tao.model.probe"}
    found = imported_modules(source, "reid_tao.model.probe", False, known)
    assert found == {"reid_tao.builders", "reid_tao.tasks.train"}
