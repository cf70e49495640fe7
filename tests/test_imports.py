"""The layout shows the architecture (docs/DESIGN.md, Architecture): commands on top, the
library below them knowing no terminal, no import cycles. Read from the source with `ast`,
so nothing is imported and no model is loaded."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "specdec_cli"

# Lower layers never import higher ones. A module's layer is the first pattern it matches.
LAYERS = [
    ("commands", ("__main__", "cli", "cli_*", "console")),
    ("front ends", ("session", "chat", "bench", "bench.*")),
    ("engine", ("generator",)),
    ("parts", ("verifier", "drafting", "history", "exactness", "tuning", "prefill", "prefill.*", "registry", "models_file", "hub",
               "devices")),
    ("foundations", ("llama", "policy", "substitutions", "metrics", "options", "offload", "text_stream", "paths", "errors", "split_model",
                     "gguf_file", "__init__")),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.startswith("specdec_cli."):
            target = node.module[len("specdec_cli."):]
        else:
            continue
        candidates = [target] + [f"{target}.{alias.name}" if target else alias.name for alias in node.names]
        out |= {c for c in candidates if c in modules and c != name}
    return out


def _layer(name: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                return index
    raise AssertionError(f"module {name} is in no layer: add it to LAYERS")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
              for a, targets in _graph().items() for b in targets if _layer(b) < _layer(a)]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_policy_is_pure() -> None:
    """The policy decides from numbers: it imports nothing of the engine."""
    assert _graph()["policy"] == set()
