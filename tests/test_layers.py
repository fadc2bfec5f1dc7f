"""The package reads as layers: errors < io < config < model, data, evaluation < engine, deploy < builders < tasks,
cli, api.

Every import (module level or inside a function) must go down a layer, or stay inside its own package;
packages of the same layer do not import each other, and no set of modules imports itself in a circle.
Only deploy/ imports the ONNX libraries, and tasks/ holds the commands (see the last two tests).
"""

import ast
from pathlib import Path

import reid_tao

PACKAGE = Path(reid_tao.__file__).parent
LAYERS = [
    ("errors",),
    ("io",),
    ("config",),
    ("model", "data", "evaluation"),
    ("engine", "deploy"),
    ("builders",),
    ("tasks", "cli", "api"),
    ("__main__",),
]
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
    return {
        name: imported_modules(path.read_text(), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


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
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
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


ONNX_LIBRARIES = ("onnx", "onnxruntime", "onnxconverter_common", "torch.onnx")


def onnx_imports(source: str) -> list:
    """The ONNX libraries a module imports anywhere (``from torch import onnx`` counts as torch.onnx)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [name for name in names if any(name == lib or name.startswith(lib + ".") for lib in ONNX_LIBRARIES)]
    return found


def test_only_deploy_imports_the_onnx_libraries():
    problems = [
        f"{module_name(path)} imports {', '.join(found)}"
        for path in PACKAGE.rglob("*.py")
        if top_package(module_name(path)) != "deploy" and (found := onnx_imports(path.read_text()))
    ]
    assert not problems, "ONNX code outside reid_tao/deploy:\n" + "\n".join(sorted(problems))
    assert onnx_imports("from torch import onnx\nimport onnxruntime.quantization as q\nimport onnxscript\n") == [
        "torch.onnx",
        "onnxruntime.quantization",
    ]


# tasks/ modules that are not a command: what several commands share, evaluate's writers, tune's report
COMMAND_HELPERS = {"common", "evaluate_outputs", "tune_report"}


def command_problems(name: str, source: str) -> list:
    """A command module defines one public function, ``run``, decorated ``@reported("<its name>")``; the rest is
    private (constants aside). Objects from spec fields come from builders/, the work from the layers below."""
    tree = ast.parse(source)
    defined = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    problems = [f"defines {node.name}" for node in defined if not node.name.startswith("_") and node.name != "run"]
    run = next((node for node in defined if node.name == "run"), None)
    reported = [
        decorator
        for decorator in (run.decorator_list if run else [])
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "reported"
    ]
    if not reported or [getattr(arg, "value", None) for arg in reported[0].args] != [name]:
        problems.append(f"has no run decorated @reported({name!r})")
    return problems


def test_tasks_hold_only_commands():
    problems = []
    for path in sorted((PACKAGE / "tasks").glob("*.py")):
        if path.stem in COMMAND_HELPERS or path.stem == "__init__":
            continue
        problems += [f"tasks/{path.name} {problem}" for problem in command_problems(path.stem, path.read_text())]
    assert not problems, "tasks/ modules that are not just a command:\n" + "\n".join(problems)


def test_the_command_rule_sees_public_helpers_and_a_missing_run():
    source = '@reported("probe")\ndef run(config, status):\n    pass\n\n\ndef _helper():\n    pass\n\n\nLIMIT = 3\n'
    assert command_problems("probe", source) == []
    assert command_problems("other", source) == ["has no run decorated @reported('other')"]
    assert command_problems(
        "probe", source + "\n\ndef build_trainer(config):\n    pass\n\n\nclass Counter:\n    pass\n"
    ) == ["defines build_trainer", "defines Counter"]
