"""The package's layering, read from the source: no cycles between its parts, and the boundaries that keep
each idea in one place (the toolkits share the VLM loader instead of importing each other)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "agci"


def _part(module: str) -> str:
    """``agci.bias.runner`` -> ``bias``; ``agci.vlm`` -> ``vlm``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "agci"


def _submodule_or_package(package: str, name: str) -> str:
    """``from agci import vlm`` imports a module; ``from agci import __version__`` imports from the package."""
    folder = PACKAGE.parent.joinpath(*package.split("."))
    return f"{package}.{name}" if (folder / f"{name}.py").is_file() or (folder / name).is_dir() else package


def _module_imports() -> dict[str, set[str]]:
    """module -> the modules of agci it imports (at any depth: lazy imports inside functions count too)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                    targets = [_submodule_or_package(base, a.name) for a in node.names]
                elif node.module and node.module.split(".")[0] == "agci":
                    targets = [_submodule_or_package(node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "agci"]
            found.update(t for t in targets if t != module)
    return graph


MODULES = _module_imports()


def _imports() -> dict[str, set[str]]:
    """part -> the other parts of agci it imports (``agci.bias.runner`` -> ``bias``)."""
    graph: dict[str, set[str]] = {}
    for module, targets in MODULES.items():
        graph.setdefault(_part(module), set()).update(_part(t) for t in targets if t.count(".") >= 1)
    for part, deps in graph.items():
        deps.discard(part)
    return graph


GRAPH = _imports()


def test_no_part_of_the_package_imports_itself_back_through_another():
    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in GRAPH.get(start, ()))

    cycles = sorted(p for p in GRAPH if p != "__init__" and reaches(p, p, {p}))
    assert not cycles, {p: sorted(GRAPH[p]) for p in cycles}


@pytest.mark.parametrize(
    ("part", "must_not_import"),
    [
        ("registry", {"patches", "grouping", "compat", "configs", "kernels", "vlm", "bias", "eval", "ris"}),
        # the engine-neutral grouping: no engine's code (transformers patches now, vLLM next)
        ("grouping", {"patches", "compat", "configs", "vlm", "bias", "eval", "ris", "resampler_probes", "cli"}),
        ("configs", {"patches", "compat", "kernels", "vlm", "bias", "eval", "ris", "resampler_probes"}),
        ("compat", {"patches", "configs", "vlm", "bias", "eval", "ris", "resampler_probes"}),
        ("kernels", {"patches", "vlm", "bias", "eval", "ris", "resampler_probes"}),
        ("patches", {"vlm", "bias", "eval", "ris", "resampler_probes", "cli"}),
        ("vlm", {"bias", "eval", "ris", "resampler_probes", "cli"}),
        ("eval", {"bias", "ris", "resampler_probes", "cli"}),
        ("bias", {"eval", "ris", "resampler_probes", "cli"}),
        ("ris", {"patches", "bias", "eval", "resampler_probes", "vlm", "cli"}),
        ("resampler_probes", {"patches", "bias", "eval", "ris", "vlm", "cli"}),
    ],
)
def test_boundaries_between_the_parts(part, must_not_import):
    assert {"vlm", "configs"} <= GRAPH["eval"] and "patches" in GRAPH["vlm"]  # the reader sees imports
    assert not GRAPH[part] & must_not_import, sorted(GRAPH[part] & must_not_import)


def test_no_module_imports_itself_back_through_others():
    """Cycles between modules, lazy imports inside functions included (they fail nowhere, so only this sees them)."""
    graph = MODULES

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = {" -> ".join(c) for m in graph if (c := cycle_from(m))}
    assert not cycles, sorted(cycles)


def test_nothing_of_the_runtime_imports_the_training_floor():
    """agci.bias.training made the shipped assets; the runtime reads them through agci.bias.shipped only."""
    floor = "agci.bias.training"
    users = {m for m, ts in MODULES.items() if not m.startswith(floor) and any(t.startswith(floor) for t in ts)}
    assert not users, sorted(users)


def test_the_commands_sit_on_top():
    """agci.commands (one module per top-level command) is imported by the entry point alone."""
    users = {m for m, ts in MODULES.items() if not m.startswith("agci.commands") and any(
        t.startswith("agci.commands") for t in ts)}  # fmt: skip
    assert users == {"agci.cli"}, sorted(users)
