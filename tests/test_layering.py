"""The package's layering, read from the source with ast (every import, also those inside functions):

  omni_jax/layers, omni_jax/ops   building blocks: no omni_jax.data, models, tasks, train, generate,
                                  convert (mel filters live in ops; data may import ops)
  omni_jax/models                 no omni_jax.data, tasks, train, generate, convert
  omni_jax/generate               no omni_jax.train (restore through omni_jax.convert.workdir)
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
UPPER = ("data", "models", "tasks", "train", "generate", "convert")
FORBIDDEN = {
    "layers": UPPER,
    "ops": UPPER,
    "models": ("data", "tasks", "train", "generate", "convert"),
    "generate": ("train",),
}


def omni_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every omni_jax import in a file; `from omni_jax import x` gives omni_jax.x."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "omni_jax"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "omni_jax":
                out += [(node.lineno, f"omni_jax.{a.name}") for a in node.names]
            elif node.module.startswith("omni_jax."):
                out.append((node.lineno, node.module))
    return out


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / "omni_jax" / package).rglob("*.py")):
        for line, mod in omni_imports(path):
            top = mod.split(".")[1] if mod.count(".") else ""
            if top in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_reaches_up_the_layering(package):
    assert (ROOT / "omni_jax" / package).is_dir()
    bad = violations(package, FORBIDDEN[package])
    assert not bad, (f"omni_jax/{package} must not import omni_jax.{{{', '.join(FORBIDDEN[package])}}}:\n  "
                     + "\n  ".join(bad))


def test_the_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from omni_jax.train.checkpoint import Checkpointer\n"
                 "    from omni_jax import data\n    import omni_jax.ops.mel_jax\n")
    assert omni_imports(f) == [(4, "omni_jax.train.checkpoint"), (5, "omni_jax.data"), (6, "omni_jax.ops.mel_jax")]
