"""The import-layer contract: dependencies point one way, and no module imports another in a cycle.

    cli, serve  >  eval, retrieval  >  embedder (forward, resolve, sentence-transformers API)  >  the base

Every import counts, the ones inside functions too (a lazy import is still a dependency). Read from the source
with ``ast``, so the test needs no optional extra installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kvembed_rag"

#: layer of each top-level part of the package; a module may import its own layer or lower ones
LAYERS: dict[str, int] = {
    "cli": 3,
    "serve": 3,
    "__main__": 3,
    "demo": 2,  # builds the demo's long document and index (retrieval)
    "eval": 2,
    "retrieval": 2,
    "embedder": 1,
    "forward": 1,
    "resolve": 1,
    "sentence_transformers_api": 1,
}
BASE = 0  # everything else: attention, config, _io, errors, postprocess, layer_selection, loading, ...
LAYER_NAMES = {0: "base", 1: "embedder", 2: "eval/retrieval", 3: "cli/serve"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    return LAYERS.get(_part(module), BASE)


def _imports(path: Path, module: str) -> set[str]:
    """The kvembed_rag modules ``path`` imports (absolute names), wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("kvembed_rag")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("kvembed_rag"):
                target = node.module
            else:
                continue
            found.add(target)
            # "from . import x" / "from .pkg import mod": x may be a module
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py"
                ).is_file():
                    found.add(candidate)
    return {name for name in found if name != module}


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path, _module_name(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_a_higher_layer() -> None:
    violations = [
        f"{module} ({LAYER_NAMES[_layer(module)]}) imports {target} ({LAYER_NAMES[_layer(target)]})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _part(module) != "__init__" and _layer(target) > _layer(module)
    ]
    assert not violations, "\n".join(violations)


def test_the_package_root_imports_lazily() -> None:
    """``kvembed_rag/__init__.py`` may name any layer (its lazy table) but imports nothing at import time."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    eager = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module not in ("__future__", "typing")]
    eager += [n for n in tree.body if isinstance(n, ast.Import) and any(a.name != "importlib" for a in n.names)]
    assert not eager, [ast.unparse(n) for n in eager]


def test_no_import_cycles_between_modules() -> None:
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of behaviour: leave those edges out
    edges = {m: {t for t in ts if not (t.startswith(m + ".") and m.count(".") >= 1)} for m, ts in graph.items()}
    edges = {m: {t for t in ts if t in graph and not graph_is_parent_init(t, m)} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def graph_is_parent_init(target: str, module: str) -> bool:
    """``module`` importing its own package's ``__init__`` (``from . import x``) follows the package, not a cycle."""
    return module.startswith(target + ".")


def test_the_contract_sees_real_imports() -> None:
    graph = _graph()
    assert "kvembed_rag.forward" in graph["kvembed_rag.embedder"]
    assert "kvembed_rag.embedder" in graph["kvembed_rag.cli.options"]
    assert _layer("kvembed_rag.cli.serve") == 3 and _layer("kvembed_rag.postprocess.files") == BASE


def test_the_core_never_imports_a_framework() -> None:
    """LangChain and LlamaIndex live in ``integrations/``; no module of the core imports them, lazily or not
    (the runtime check in test_optional_dependencies.py only sees what ``import kvembed_rag`` loads)."""
    frameworks = ("langchain", "langchain_core", "langchain_community", "llama_index")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            found += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.split(".")[0] in frameworks]
    assert not found, found


#: the bottom of the stack: what every other module may build on, importing only one another
FOUNDATION = {
    "kvembed_rag.attention",
    "kvembed_rag.config",
    "kvembed_rag.errors",
    "kvembed_rag.methods",
    "kvembed_rag.prompts",
    "kvembed_rag._io",
}


def test_attention_and_config_sit_at_the_bottom() -> None:
    """The brief's order ends in ``embedder > attention, config``: the attention hook and the configuration
    import nothing above them (not post-processing, loading or layer selection), so either can be read alone."""
    graph = _graph()
    violations = {m: sorted(graph[m] - FOUNDATION) for m in sorted(FOUNDATION) if graph[m] - FOUNDATION}
    assert not violations, violations
