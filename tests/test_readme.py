"""The README's Python snippets run as written: a newcomer copies them first."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

SNIPPETS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_every_python_snippet_of_the_readme_runs(tmp_path):
    assert SNIPPETS
    for i, code in enumerate(SNIPPETS):
        script = tmp_path / f"snippet{i}.py"
        script.write_text(code)
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                                timeout=300)
        assert result.returncode == 0, f"README snippet {i} failed:\n{result.stderr}"
