"""The README's library example runs as printed."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_library_example_runs_and_gives_what_its_comments_say():
    text = open(README, encoding="utf-8").read()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert np.isfinite(float(namespace["loss"]))
    assert np.all(np.isfinite(np.asarray(namespace["grad"])))
    assert -1.0 <= float(namespace["score"]) <= 1.0
    np.testing.assert_allclose(namespace["ranks"], [[3.0, 1.0, 2.0]], atol=1e-3)
