"""The architecture contract, checked on the import graph (grimp): imports run one way between the
packages, and no package imports itself in a loop.

Layers, highest first: ``shufflenas`` (and the scripts in ``experiments/``, which no package may
import) > ``nas`` > ``evaluators`` > ``search_space``. A module may import from its own layer and
the layers below it, never above. Every import counts, the ones inside functions too.
"""

from __future__ import annotations

import pytest

LAYERS = ("shufflenas", "nas", "evaluators", "search_space")


@pytest.fixture(scope="module")
def graph():
    grimp = pytest.importorskip("grimp", reason="grimp (the test extra) is not installed")
    return grimp.build_graph(*LAYERS, include_external_packages=True, exclude_type_checking_imports=True)


def upward_imports(graph) -> list[str]:
    """Each import of a higher layer by a lower one, as 'importer -> imported (line N)'."""
    found = []
    for dep in graph.find_illegal_dependencies_for_layers(layers=LAYERS):
        for route in dep.routes:
            for importer in route.heads:
                for imported in route.tails:
                    chain = graph.find_shortest_chain(importer=importer, imported=imported) or (importer, imported)
                    lines = graph.get_import_details(importer=chain[0], imported=chain[1])
                    at = f" (line {lines[0]['line_number']})" if lines else ""
                    found.append(" -> ".join(chain) + at)
    return sorted(set(found))


def cycles_within(graph, package: str) -> list[list[str]]:
    """Groups of modules of ``package`` that import each other in a loop (strongly connected, > 1 module)."""
    mods = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    inside = set(mods)
    edges = {m: sorted(x for x in graph.find_modules_directly_imported_by(m) if x in inside) for m in mods}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for m in mods:
        if m not in index:
            visit(m)
    return found


def test_imports_run_one_way_between_the_packages(graph):
    bad = upward_imports(graph)
    assert not bad, "a lower layer imports a higher one (layers: " + " > ".join(LAYERS) + "):\n" + "\n".join(bad)


def test_no_package_imports_the_experiment_scripts(graph):
    bad = sorted(m for m in graph.find_modules_that_directly_import("experiments")) \
        if "experiments" in graph.modules else []
    assert not bad, f"experiments/ holds scripts on top of every layer; imported by {bad}"


@pytest.mark.parametrize("package", LAYERS)
def test_no_import_loop_within_a_package(graph, package):
    loops = cycles_within(graph, package)
    assert not loops, f"modules of {package} import each other in a loop: {loops}"


def test_the_checks_see_a_violation():
    """The two checks above on a graph with one upward import and one loop added: both are caught."""
    grimp = pytest.importorskip("grimp", reason="grimp (the test extra) is not installed")
    g = grimp.build_graph(*LAYERS, exclude_type_checking_imports=True)
    g.add_import(importer="search_space.space", imported="nas.records", line_number=1, line_contents="")
    assert any(x.startswith("search_space.space -> nas.records") for x in upward_imports(g))
    g.add_import(importer="nas.experiment", imported="nas.run_folder", line_number=1, line_contents="")
    assert any({"nas.experiment", "nas.run_folder"} <= set(loop) for loop in cycles_within(g, "nas"))
