"""The evaluation package works without the training extra: importing it loads no Lightning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import perceiver_vl


def test_importing_evaluation_does_not_import_lightning():
    # the top two levels of each forbidden module that got loaded (a readable failure message)
    code = (
        "import sys\n"
        "import perceiver_vl.evaluation as evaluation\n"
        "evaluation.evaluate_retrieval, evaluation.evaluate_qa, evaluation.RetrievalInputs\n"
        "prefixes = ('lightning', 'pytorch_lightning', 'lightning_fabric', 'perceiver_vl.train')\n"
        "loaded = sorted({'.'.join(m.split('.')[:2]) for m in sys.modules\n"
        "                 if any(m == p or m.startswith(p + '.') for p in prefixes)})\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    # the interpreter imports the perceiver_vl under test, not another installed copy
    src = str(Path(perceiver_vl.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (
        f"importing perceiver_vl.evaluation loaded {done.stdout}{done.stderr}"
    )
