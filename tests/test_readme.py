"""The README's first code example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_step_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    namespace: dict = {}
    exec(blocks[0], namespace)
    assert int(namespace["state"].step) == 2
    assert set(namespace["metrics"]) == {"loss", "accuracy", "count"}
