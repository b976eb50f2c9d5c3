"""The package's import structure (docs/architecture.md, "Module map"): every import counted, the ones inside
functions and under TYPE_CHECKING too, the modules form layers with no circle and no import running back up,
at most MAX_FLOORS deep. Checked with networkx on the graph read from the source with ast."""
import ast
import pathlib

import networkx as nx
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "spr_jax"
MAX_FLOORS = 11


def _module_name(path: pathlib.Path, package: pathlib.Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: pathlib.Path = PACKAGE) -> nx.DiGraph:
    """Module -> the package's modules it imports anywhere in its source (a submodule named by
    `from package import name` counts as that submodule; the implicit import of a parent package does not)."""
    files = {_module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import spr_jax.data.stream as s` names a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph.add_edge(name, target)
    return graph


def test_the_reader_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "spr_jax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("def __getattr__(n):\n    from spr_jax import top\n")
    (pkg / "top.py").write_text("from typing import TYPE_CHECKING\n"
                                "if TYPE_CHECKING:\n    from spr_jax.sub import leaf\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from .. import errors\n")
    (pkg / "errors.py").write_text("import os\n")
    g = import_graph(pkg)
    assert set(g.edges) == {("spr_jax", "spr_jax.top"), ("spr_jax.top", "spr_jax.sub.leaf"),
                            ("spr_jax.sub.leaf", "spr_jax.errors")}


def test_no_circle_and_no_import_runs_back_up():
    g = import_graph()
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import circles: {cycles[:3]}"


def test_at_most_eleven_floors():
    g = import_graph()
    if not nx.is_directed_acyclic_graph(g):
        pytest.fail("the imports have a circle (see test_no_circle_and_no_import_runs_back_up)")
    chain = nx.dag_longest_path(g)
    assert len(chain) <= MAX_FLOORS, " -> ".join(chain)


def test_the_phases_and_seams_sit_below_the_edge():
    """Nothing a phase or a seam imports reaches the edge (settings, the run's loop, the API)."""
    g = import_graph()
    edge = {"spr_jax.settings", "spr_jax.run_setup", "spr_jax.run_loop", "spr_jax.api", "spr_jax.comparison",
            "spr_jax.config_files", "spr_jax"}
    for low in ("spr_jax.expert_phase", "spr_jax.replay_phase", "spr_jax.evaluate", "spr_jax.online",
                "spr_jax.experts", "spr_jax.simclr", "spr_jax.filters", "spr_jax.buffers", "spr_jax.models",
                "spr_jax.losses", "spr_jax.augment"):
        reached = nx.descendants(g, low) & edge
        assert not reached, f"{low} imports {sorted(reached)}"
