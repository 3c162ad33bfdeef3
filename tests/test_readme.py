"""The README's Python example runs as written."""

import re

from .conftest import REPO


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["out"].mlm_logits.shape == (2, 40, 30522)
    assert namespace["mixed"].shape == (2, 2)
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
