"""The tree shows the architecture, and the imports keep to it (docs/architecture.md).

Every import of the project's own modules is read from the source (ast; imports inside
functions count too, since a lazy import is still a dependency), then:
- no module imports another that (directly or through others) imports it back;
- no module imports from a layer above its own;
- the pure layers (planning, quality) and the Ray-free cores (actors/core) import no Ray, and
  nothing under cluster/ imports torch at module level of a driver-side layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cluster", "actors", "models")

# Lowest first: a module may import its own layer and those below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("cluster.errors", "cluster.env", "cluster.config_files", "cluster.work")),
    ("models", ("models",)),
    ("planning", ("cluster.planning", "cluster.quality")),
    ("output", ("cluster.output",)),
    ("observability", ("cluster.observability",)),
    ("actor cores", ("actors.core",)),
    ("actors", ("actors",)),
    ("engine", ("cluster.engine",)),
    ("pipeline", ("cluster.pipeline",)),
    ("entrypoints", ("cluster.entrypoints",)),
]
RAY_FREE = ("cluster.planning", "cluster.quality", "actors.core", "cluster.output", "models")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path, modules: dict[str, Path]) -> dict[str, set[str]]:
    """{project module imported: names of third-party top-level packages} as two views:
    'project' -> the project's modules it imports, 'external' -> other top-level packages."""
    project, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import module` names a module; `from module import name` names the module
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                resolved = _resolve(name, modules)
                if resolved:
                    project.add(resolved)
            else:
                external.add(name.split(".")[0])
    return {"project": project, "external": external}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    edges = {}
    for name, path in modules.items():
        # a package's __init__ is imported with any of its modules: only real edges count
        edges[name] = {m for m in imports_of(path, modules)["project"] if m != name and not name.startswith(m + ".")}
    return edges


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} belongs to no layer: add it to LAYERS (and to docs/architecture.md)"
    return rank


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_circle_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back_through_others():
    assert cycles(graph()) == []


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for module, imported in sorted(graph().items()):
        for other in sorted(imported):
            if layer_of(other) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {other} "
                              f"({LAYERS[layer_of(other)][0]})")
    assert upward == []


def test_every_module_belongs_to_a_layer():
    for module in project_modules():
        if module not in PACKAGES:
            layer_of(module)


def test_the_pure_layers_and_the_actor_cores_import_no_ray():
    modules = project_modules()
    with_ray = [name for name, path in modules.items()
                if name.startswith(RAY_FREE) and "ray" in imports_of(path, modules)["external"]]
    assert with_ray == []


def test_every_package_says_its_job():
    for init in [*ROOT.glob("cluster/**/__init__.py"), *ROOT.glob("actors/**/__init__.py"), ROOT / "models/__init__.py"]:
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 8, f"{init.relative_to(ROOT)} has no docstring saying its layer's job"


def test_cluster_has_a_handful_of_top_level_modules():
    top = sorted(p.stem for p in (ROOT / "cluster").glob("*.py") if p.stem != "__init__")
    assert top == ["config_files", "env", "errors", "work"]


def test_the_architecture_doc_matches_the_tree():
    """Every path docs/architecture.md names exists, and it names every package of the tree."""
    import re

    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:cluster|actors|models|configs|docs|tests)/[\w/.*-]*)`", doc))
    missing = sorted(p for p in named if not list(ROOT.glob(p.rstrip("/"))))
    assert missing == []
    packages = sorted(str(init.parent.relative_to(ROOT)) + "/" for init in
                      [*ROOT.glob("cluster/*/__init__.py"), *ROOT.glob("actors/*/__init__.py")])
    assert [p for p in packages if f"`{p}`" not in doc] == []
    for layer, _ in LAYERS:
        assert layer in doc, f"the layer {layer!r} is not in docs/architecture.md"


def test_functions_in_cluster_are_short_with_few_parameters_or_say_why():
    """~80 lines and ~8 parameters at most (self not counted); a longer one says why in a comment
    right above it that starts with `# long:`."""
    too_big = []
    for path in sorted((ROOT / "cluster").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            params = [a for a in [*args.posonlyargs, *args.args, *args.kwonlyargs] if a.arg not in ("self", "cls")]
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            said_why = first >= 2 and lines[first - 2].strip().startswith("# long:")
            if (length > 85 or len(params) + bool(args.vararg) + bool(args.kwarg) > 8) and not said_why:
                too_big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines, {len(params)} parameters")
    assert too_big == []
