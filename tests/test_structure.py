"""The package's shape, as the design states it (docs/architecture.md): no import cycle, no private name
imported across modules, short modules and functions, a thin CLI, tower kinds tested only by the towers."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "parity"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict) -> dict[str, set[str]]:
    """{imported parity module: names taken from it} for every import in the module, at any depth (a
    function's import is a dependency too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            if source not in known:
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in known:  # a submodule
                    found.setdefault(f"{source}.{alias.name}", set())
                else:
                    found.setdefault(source, set()).add(alias.name)
    return found


def graph() -> dict[str, dict[str, set[str]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_the_walk_sees_imports():
    g = graph()
    assert "parity.config.schema" in g["parity.towers"] or "parity.config.parts" in g["parity.towers.vit"]
    assert "parity.towers" in g["parity.config.schema"]


def cycles(g: dict) -> list[str]:
    """Every import cycle found by a depth-first walk over the imports the modules write (a package's
    __init__ that imports its modules, and a module that imports a name from that __init__, make one)."""
    edges = {m: set(deps) for m, deps in g.items()}
    for m in edges:
        edges[m].discard(m)
    state: dict[str, int] = {}
    found = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                found.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return found


def private_imports(g: dict) -> list[str]:
    return sorted(f"{m} takes {name} from {src}" for m, deps in g.items() for src, names in deps.items()
                  for name in names if name.startswith("_") and name != "__version__")


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "\n".join(found)


def test_no_private_name_is_imported_across_modules():
    taken = private_imports(graph())
    assert not taken, "\n".join(taken)


def test_modules_and_functions_are_short_and_the_cli_thin():
    long_modules = sorted(f"{p.relative_to(PACKAGE)} {n}" for p in PACKAGE.rglob("*.py")
                          if (n := len(p.read_text().splitlines())) > 400)
    long_functions = sorted(f"{p.relative_to(PACKAGE)}:{f.name} {f.end_lineno - f.lineno + 1}"
                            for p in PACKAGE.rglob("*.py") for f in ast.walk(ast.parse(p.read_text()))
                            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno >= 60)
    assert not long_modules and not long_functions, (long_modules, long_functions)
    assert len((PACKAGE / "cli.py").read_text().splitlines()) < 300


def test_no_layout_is_read_by_attribute_name():
    hits = [f"{p}:{i}" for p in PACKAGE.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"getattr\((layout|target|carrier|m)\b", line)]
    assert not hits, hits


# where a tower kind's name may stand: the towers, the model classes, the registry entries (and the
# Chinese-CLIP config files they read), the layouts' rows
BERT_PLACES = ("towers/", "layouts/", "models/torch_clip.py", "models/paddle_clip.py", "config/registry.py",
               "config/cn_clip.py")


def test_no_module_tests_a_tower_kind():
    hits = sorted(f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}" for p in PACKAGE.rglob("*.py")
                  if not str(p.relative_to(PACKAGE)).startswith(BERT_PLACES)
                  for i, line in enumerate(p.read_text().splitlines(), 1) if "bert" in line)
    assert not hits, "\n".join(hits)
    kind_tests = sorted(f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}" for p in PACKAGE.rglob("*.py")
                        if not str(p.relative_to(PACKAGE)).startswith(("towers/", "layouts/", "models/", "config/"))
                        for i, line in enumerate(p.read_text().splitlines(), 1)
                        if re.search(r"(vision|text|\bv|\bt|t_cfg)\.kind\s*[!=]=|kind\s+(not\s+)?in\s+\(", line))
    assert not kind_tests, "\n".join(kind_tests)


def test_the_checks_can_fail(tmp_path):
    # the walk itself, on two made-up modules that import each other, one taking a private name
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from .b import _x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n")
    known = {"parity": tmp_path / "__init__.py", "parity.a": tmp_path / "a.py", "parity.b": tmp_path / "b.py"}
    g = {n: imports(n, p, known) for n, p in known.items()}
    assert g == {"parity": {}, "parity.a": {"parity.b": {"_x"}}, "parity.b": {"parity.a": set()}}
    assert cycles(g) == ["parity.a -> parity.b -> parity.a"]
    assert private_imports(g) == ["parity.a takes _x from parity.b"]


def test_both_model_files_build_every_tower_kind():
    """The model files choose their classes through the tower registry: each kind has its builder and its
    block class in both, under the same names, and nothing else."""
    from parity import towers
    from parity.models import paddle_clip, torch_clip

    for module in (torch_clip, paddle_clip):
        assert set(module.VISION) == set(towers.REGISTRY["vision"]), module.__name__
        assert set(module.TEXT) == set(towers.REGISTRY["text"]), module.__name__
        blocks = {t.block for part in towers.REGISTRY.values() for t in part.values()}
        assert set(module.BLOCKS) == blocks, module.__name__
        assert all(module.BLOCKS[name].__name__ == name for name in blocks)


def test_every_tower_says_what_its_contract_asks():
    from parity import towers

    for part, kinds in towers.REGISTRY.items():
        for kind, tower in kinds.items():
            assert (tower.kind, tower.part) == (kind, part)
            assert set(tower.unknown) <= set(tower.unsaid), kind  # what no tensor says, a shapes-only config lacks


def test_the_runtime_never_imports_test_support():
    g = graph()
    runtime = [m for m in g if not m.startswith("parity.testing")]
    reached = sorted(f"{m} imports {dep}" for m in runtime for dep in g[m] if dep.startswith("parity.testing"))
    assert not reached, reached
