"""The dependency rules of docs/design.md, checked on the source: every import of a jaxorder or
pallas_kernels module points to the same layer or a lower one, none sits inside a function, and the
module graph has no cycle."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first; a module belongs to the longest prefix listed (docs/design.md, "Dependency rules").
LAYERS = (
    ("jaxorder.errors", "jaxorder.registry", "jaxorder.config", "jaxorder.paths", "jaxorder.jsonout",
     "jaxorder.orders"),
    ("jaxorder.platform.sharding", "jaxorder.platform.distributed", "jaxorder.platform.host_memory",
     "jaxorder.platform.progress", "jaxorder.platform.flops", "jaxorder.platform.compile_cache",
     "jaxorder.platform.topology", "jaxorder.interop", "jaxorder.interop.extras",
     "jaxorder.interop.modeling_jaxorder"),
    ("jaxorder.model", "pallas_kernels"),
    ("jaxorder.data",),
    ("jaxorder.objectives",),
    ("jaxorder.sampling",),
    ("jaxorder.evaluation.yardstick", "jaxorder.evaluation.fixed_orders",
     "jaxorder.evaluation.commit_order",
     "jaxorder.evaluation.filter_training", "jaxorder.interop.hf_weights", "jaxorder.interop.hf_import"),
    ("jaxorder.training",),
    ("jaxorder.evaluation.runs", "jaxorder.evaluation.sample_quality", "jaxorder.evaluation.scoring",
     "jaxorder.evaluation.rerank"),
    ("jaxorder.experiments", "jaxorder.interop.hf_export", "jaxorder.interop.lm_eval_model",
     "jaxorder.interop.lm_scoring"),
    ("jaxorder.platform.aot", "jaxorder.cli"),
)


def layer_of(module: str) -> int:
    best = max(((len(p), rank) for rank, prefixes in enumerate(LAYERS) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/design.md"
    return best[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*REPO.glob("jaxorder/**/*.py"), *REPO.glob("pallas_kernels/**/*.py")]):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported jaxorder/pallas_kernels module, at module level?, line) for every import in path;
    `from pkg import name` counts as importing pkg.name when that is a module."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def top_level(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return False
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                return True  # type-only: never executed, still must respect the layers
        return True

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names]
        else:
            continue
        out += [(t, top_level(node), node.lineno) for t in dict.fromkeys(targets)
                if t.split(".")[0] in ("jaxorder", "pallas_kernels")]
    return out


def test_imports_point_down_and_sit_at_the_top():
    known = modules()
    problems = []
    for name, path in known.items():
        if name == "jaxorder":  # the package __init__ imports the objectives to fill the registry
            continue
        for target, top, line in imports(path, known):
            if layer_of(target) > layer_of(name):
                problems.append(f"{path.relative_to(REPO)}:{line} imports {target} from a higher layer")
            if not top:
                problems.append(f"{path.relative_to(REPO)}:{line} imports {target} inside a function")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    known = modules()
    graph = {name: {t for t, _, _ in imports(path, known) if t in known and t != name}
             for name, path in known.items() if name != "jaxorder"}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            assert nxt not in stack, "import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt])
            if nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    for name in sorted(graph):
        visit(name, [name])


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    known = {"jaxorder.model.fake": tmp_path / "fake.py"}
    known["jaxorder.model.fake"].write_text("def f():\n    from jaxorder.training import loop\n")
    (target, top, _), = imports(known["jaxorder.model.fake"], known)
    assert target == "jaxorder.training" and not top and layer_of(target) > layer_of("jaxorder.model.fake")
    graph_modules = {"jaxorder.data.a": tmp_path / "a.py", "jaxorder.data.b": tmp_path / "b.py"}
    graph_modules["jaxorder.data.a"].write_text("from jaxorder.data import b\n")
    graph_modules["jaxorder.data.b"].write_text("from jaxorder.data import a\n")
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: graph_modules)
    cycle = "import cycle: jaxorder.data.a -> jaxorder.data.b -> jaxorder.data.a"
    with pytest.raises(AssertionError, match=cycle):
        test_no_import_cycles()
