"""Imports go down, never up: every import of every module (function-local ones too) against the layer
table of docs/design.md, read from the document itself so the two cannot drift apart.

A module may import its own table entry and any entry of a lower layer. A package's `__init__` runs
whenever any module under it is imported, so it may import only what the lowest entry under it may.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "opensora_lite"


def layer_table(text: str) -> dict[str, int]:
    """{dotted entry (e.g. "config.schema"): layer} from the table under '## Layers' in docs/design.md."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    table: dict[str, int] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`([\w.]+)/?`", m.group(2)):
                table[name] = int(m.group(1))
    return table


def entry_of(module: str, table: dict[str, int]) -> str | None:
    """The longest table entry that is `module` or a package above it ("opensora_lite." dropped)."""
    name = module.removeprefix("opensora_lite").lstrip(".")
    parts = name.split(".") if name else []
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in table:
            return ".".join(parts[:i])
    return None


def module_name(path: Path, base: Path) -> str:
    rel = path.relative_to(base).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module imported) for every import of ours, at any depth, outside `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("opensora_lite")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            if base.startswith("opensora_lite"):
                # `from pkg import name` may import the submodule pkg.name
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def upward_imports(root: Path, table: dict[str, int]) -> list[str]:
    """One line per import of a package (at `root`) that goes up the table."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root.parent)
        entry = entry_of(module, table)
        if path.name == "__init__.py":  # runs on any import below it: the lowest entry under it rules
            prefix = module.removeprefix("opensora_lite").lstrip(".")
            below = [n for n in table if not prefix or n == prefix or n.startswith(prefix + ".")]
            entry = min(below, key=table.__getitem__) if below else entry
        if entry is None:
            problems.append(f"{module}: in no layer of docs/design.md's table")
            continue
        for line, target in imports(path, module):
            got = entry_of(target, table)
            if got is None:
                continue  # `from pkg import name` where name is not a module: judged by pkg itself
            if got != entry and table[got] >= table[entry]:
                problems.append(
                    f"{path.relative_to(root.parent)}:{line}: {module} (layer {table[entry]}, {entry}) imports "
                    f"{target} (layer {table[got]}, {got})"
                )
    return problems


def test_every_import_goes_down_the_layer_table():
    table = layer_table((REPO / "docs" / "design.md").read_text())
    assert table, "no layer table in docs/design.md"
    problems = upward_imports(PACKAGE, table)
    assert not problems, "imports that go up the layers of docs/design.md:\n" + "\n".join(problems)


def test_the_check_fails_on_an_upward_import(tmp_path):
    """The check itself: a copy of the package with one upward import (a model importing the trainer,
    inside a function) is caught, with its file and line."""
    import shutil

    table = layer_table((REPO / "docs" / "design.md").read_text())
    copy = tmp_path / "opensora_lite"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "models" / "spec.py"
    target.write_text(target.read_text() + "\n\ndef _up():\n    from opensora_lite.train import trainer  # noqa\n")
    problems = upward_imports(copy, table)
    assert any(p.startswith("opensora_lite/models/spec.py:") and "train" in p for p in problems), problems


def _imported_by(statement: str) -> set[str]:
    """The modules loaded by `statement` in a fresh interpreter."""
    code = f"{statement}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


def test_light_imports_stay_light():
    """The config schema loads no engine, trainer or CLI; the planner's CLI loads neither the trainer nor
    PyAV; a GPU script imports a model family and an engine without omegaconf (or Hydra)."""
    schema = _imported_by("import opensora_lite.config.schema")
    heavy = [m for m in schema if m.startswith(("opensora_lite.parallel", "opensora_lite.train", "opensora_lite.cli"))]
    assert not heavy, heavy
    plan = _imported_by("import opensora_lite.cli.plan")
    assert "av" not in plan and not any(m.startswith("opensora_lite.train") for m in plan)
    gpu = _imported_by("import opensora_lite.models.flux, opensora_lite.parallel.fsdp2")
    assert "omegaconf" not in gpu and "hydra" not in gpu
