"""Every name the repository imports from its own modules exists there, and so does every attribute
it reads off an imported module of ours (`from omni_jax.x import y`, `import speech_ctc_baseline as
scb; scb.fit`). pyflakes (tests/test_lint.py) checks one file at a time and cannot see a name that a
change removed or renamed in another module; the benchmarks and scripts import many of them inside
functions that no test calls. Read statically (ast), so no module is imported or run here."""

import ast
import functools
import pathlib

import pytest

from tests.test_lint import ROOT, python_files

OURS = ("omni_jax", "launch", "configs", "tests")


def module_file(module: str, sibling_dir: pathlib.Path | None = None) -> pathlib.Path | None:
    """The file of dotted `module` (a package's __init__.py), or a sibling script's file."""
    base = ROOT.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if module.split(".")[0] in OURS and f.exists():
            return f
    if sibling_dir is not None and "." not in module and (sibling_dir / f"{module}.py").exists():
        return sibling_dir / f"{module}.py"
    return None


def _bound(stmts) -> set[str]:
    """Names bound at module level by `stmts`, through if / try / with / for blocks."""
    names = set()
    for s in stmts:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(s.name)
        elif isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            targets = s.targets if isinstance(s, ast.Assign) else (
                [i.optional_vars for i in s.items if i.optional_vars] if isinstance(s, ast.With) else [s.target])
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(s, (ast.Import, ast.ImportFrom)):
            names |= {a.asname or a.name.split(".")[0] for a in s.names}
        for block in ("body", "orelse", "finalbody"):
            if isinstance(s, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                names |= _bound(getattr(s, block, []))
        for handler in getattr(s, "handlers", []):
            names |= _bound(handler.body)
    return names


@functools.cache
def top_names(path: pathlib.Path) -> frozenset[str]:
    return frozenset(_bound(ast.parse(path.read_text(), str(path)).body))


def has(module_path: pathlib.Path, module: str, name: str) -> bool:
    names = top_names(module_path)
    if name.startswith("__") and name.endswith("__"):  # a module's own __file__, __doc__, ...
        return True
    if name in names or "*" in names or "__getattr__" in names:
        return True
    return module_path.name == "__init__.py" and module_file(f"{module}.{name}") is not None


def problems(path: pathlib.Path, source: str | None = None) -> list[str]:
    """What `path` (or `source` read as if it were that file) imports from us that does not exist."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    rel = path.relative_to(ROOT)
    package = rel.with_suffix("").parts[:-1]
    sibling_dir = path.parent if rel.parts[0] == "benchmarks" else None
    modules: dict[str, tuple[str, pathlib.Path]] = {}  # local name -> (module, file), module aliases
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                f = module_file(a.name, sibling_dir)
                if f is None and a.name.split(".")[0] in OURS:
                    out.append(f"{rel}:{node.lineno}: no module {a.name!r}")
                elif f is not None:
                    local = a.asname or a.name.split(".")[0]
                    target = a.name if a.asname else a.name.split(".")[0]
                    modules[local] = (target, module_file(target, sibling_dir))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(package[:len(package) - node.level + 1] + ((module,) if module else ()))
            f = module_file(module, sibling_dir)
            if f is None:
                if module.split(".")[0] in OURS:
                    out.append(f"{rel}:{node.lineno}: no module {module!r}")
                continue
            for a in node.names:
                if not has(f, module, a.name):
                    out.append(f"{rel}:{node.lineno}: {module!r} has no {a.name!r}")
                elif (sub := module_file(f"{module}.{a.name}")) is not None:
                    modules[a.asname or a.name] = (f"{module}.{a.name}", sub)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            module, f = modules[node.value.id]
            if isinstance(node.ctx, ast.Load) and not has(f, module, node.attr):
                out.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}: {module!r} has no {node.attr!r}")
    return out


def test_imported_names_exist():
    files = python_files()
    found = [p for f in files for p in problems(f)]
    assert not found, "names imported from our own modules that do not exist there (renamed or removed? " \
                      "import the new name):\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from omni_jax.models.navit import patch_positions\n", None),
    ("from omni_jax.models.navit import no_such_function\n", "has no 'no_such_function'"),
    ("from omni_jax.no_such_module import x\n", "no module 'omni_jax.no_such_module'"),
    ("from omni_jax.models import navit\nnavit.patch_positions\n", None),
    ("from omni_jax.models import navit\nnavit.merge_window_positions\n", "navit.merge_window_positions"),
    ("import omni_jax.models.navit as nv\nnv.gone\n", "nv.gone"),
    ("import speech_ctc_baseline as scb\nscb.fit\nscb.no_fit\n", "scb.no_fit"),
])
def test_checker_catches_a_missing_name(source, expected):
    """The checker itself: each source is read as if it were a script in benchmarks/."""
    found = problems(ROOT / "benchmarks" / "probe.py", source)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found
