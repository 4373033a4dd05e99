"""The shape of the code base (issue 10): imports flow one way and the pieces stay small.

- No import cycle among the modules of pmm_gpu/, function-local imports included (an edge from module
  A to B for every ``import``/``from ... import`` of B anywhere in A, relative imports resolved).
- Function-local imports only of optional dependencies (and the PEP 562 lazy attribute in
  pmm_gpu/__init__.py, which loads the estimators only when scikit-learn is wanted).
- No function over 80 lines and no module over 400 lines in pmm_gpu/ and profiling/; ``fit`` at most 60.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = {"cupy", "cupyx", "torch", "jax", "jaxlib", "sklearn", "nvtx", "mpi4py", "psutil", "scipy", "threadpoolctl"}
MAX_FUNCTION, MAX_MODULE, MAX_FIT = 80, 400, 60


def modules(package: str = "pmm_gpu") -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]):
    """(target module, local?) for every import in the module ``name`` at ``path``, resolved to the
    modules in ``known`` (``from pkg import sub`` names the submodule when it is one)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                stem = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(stem + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            yield t, id(node) in local


def test_no_import_cycles():
    mods = modules()
    graph = {m: {t for t, _ in imports(m, p, set(mods)) if t in mods and t != m} for m, p in mods.items()}
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join(path[path.index(t):] + [t])
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in mods:
        if m not in state:
            visit(m, [m])


def test_function_local_imports_only_for_optional_dependencies():
    mods = modules()
    bad = []
    for m, p in mods.items():
        for target, local in imports(m, p, set(mods)):
            if local and target.split(".")[0] not in OPTIONAL:
                if not (m == "pmm_gpu" and target == "pmm_gpu.estimators"):
                    bad.append(f"{m} imports {target} inside a function")
    assert not bad, bad


@pytest.mark.parametrize("package", ["pmm_gpu", "profiling"])
def test_functions_and_modules_are_small(package):
    too_long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                limit = MAX_FIT if (path.name, node.name) == ("train.py", "fit") else MAX_FUNCTION
                if size > limit:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size} lines (max {limit})")
    assert not too_long, too_long


def test_every_cited_document_exists():
    """Every citation of a design document in code and docs resolves: the math doc is cited as
    docs/DESIGN.md (never a bare DESIGN.md, which the repository does not hold at its top), and every
    docs/<name>.md that is cited exists."""
    bad = []
    for path in [*ROOT.glob("pmm_gpu/**/*.py"), *ROOT.glob("kernels/*.cu*"), *ROOT.glob("profiling/*.py"),
                 *ROOT.glob("profiling/*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("examples/*.py"),
                 ROOT / "README.md"]:
        text = path.read_text(errors="replace")
        bare = re.findall(r"(?<![/\w])DESIGN\.md", text)
        if bare and path.parent.name != "docs":
            bad.append(f"{path.relative_to(ROOT)} cites DESIGN.md without docs/")
        bad += [f"{path.relative_to(ROOT)} cites missing {d}" for d in re.findall(r"docs/[\w.-]+\.md", text)
                if not (ROOT / d).is_file()]
    assert (ROOT / "docs" / "DESIGN.md").is_file()
    assert not bad, bad
