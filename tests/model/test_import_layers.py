"""The import graph of ``perceiver_vl.model``: layered, no circle (docs/architecture.md).

A module may import only modules of a strictly lower layer, wherever the import stands (top
level, inside a function, under ``TYPE_CHECKING``), so a circle cannot come back unnoticed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import perceiver_vl.model

PACKAGE = Path(perceiver_vl.model.__file__).parent

# Lowest first. A new module must be placed here (the test below refuses unknown modules).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("config", "flops"),
    ("presets", "attention"),
    ("split_attention",),
    ("embeddings", "encoder", "decoder", "heads"),
    ("weights",),
    ("modeling",),
    ("streams",),
    ("cli", "__init__"),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def _own_imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(module of perceiver_vl.model imported, line, whether at the module's top level)."""
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1:  # from .x import y / from . import x
                names = [base.split(".")[0]] if base else [a.name for a in node.names]
            elif base.startswith("perceiver_vl.model."):
                names = [base.split(".")[2]]
            elif base == "perceiver_vl.model":
                names = [a.name if a.name in LAYER_OF else "__init__" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [
                a.name.split(".")[2] for a in node.names if a.name.startswith("perceiver_vl.model.")
            ]
        found += [(name, node.lineno, id(node) in top_level) for name in names]
    return found


def test_every_module_has_a_layer():
    unknown = sorted(set(_modules()) - set(LAYER_OF))
    assert not unknown, f"place {unknown} in LAYERS (and in docs/architecture.md)"


def test_no_module_imports_its_own_layer_or_above():
    wrong = []
    for name in _modules():
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for target, line, at_top in _own_imports(tree):
            if LAYER_OF.get(target, -1) >= LAYER_OF[name]:
                wrong.append(f"{name}.py:{line} imports {target}")
            elif not at_top:
                wrong.append(f"{name}.py:{line} imports {target} inside a function or block")
    assert not wrong, "import order violated:\n" + "\n".join(wrong)


def test_the_checker_sees_relative_absolute_and_nested_imports():
    tree = ast.parse(
        "from .modeling import PerceiverVL\n"
        "import perceiver_vl.model.streams\n"
        "def f():\n"
        "    from perceiver_vl.model.weights import save_pretrained\n"
    )
    assert _own_imports(tree) == [
        ("modeling", 1, True),
        ("streams", 2, True),
        ("weights", 4, False),
    ]


def test_each_module_imports_first_in_a_fresh_interpreter():
    """Each module imported with none of our package loaded before it (purged between
    modules): none depends on something else having been imported first. One interpreter keeps
    torch loaded between modules."""
    script = (
        "import importlib, sys\n"
        "import torch\n"
        f"for name in {_modules()!r}:\n"
        "    for key in [k for k in sys.modules if k.startswith('perceiver_vl')]:\n"
        "        del sys.modules[key]\n"
        "    module = 'perceiver_vl.model' + ('' if name == '__init__' else '.' + name)\n"
        "    importlib.import_module(module)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
