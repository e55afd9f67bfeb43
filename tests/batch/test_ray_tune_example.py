"""The README's Ray Tune example (examples/ray_tune_autoinit.py) runs, on the module's local
Ray instance, and does what it says: after autoinit every candidate's output variance,
measured in onnxruntime, is about 1, where the exported N(0, 1) weights blow it up with depth."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from .conftest import require

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ray_tune_autoinit.py"


def test_the_readme_shows_the_example():
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    body = EXAMPLE.read_text().split('"""', 2)[2].strip()  # without the module docstring
    assert any(block.strip() == body for block in blocks)


def test_the_ray_tune_example_runs(ray_instance, tmp_path):
    require("ray.tune")
    spec = importlib.util.spec_from_file_location("ray_tune_autoinit", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    sys.modules[spec.name] = example
    ray_instance.cloudpickle.register_pickle_by_value(example)  # trials get it by value
    rows = example.search(str(tmp_path))
    assert sorted((r["depth"], r["width"]) for r in rows) == [(2, 32), (2, 128), (8, 32),
                                                               (8, 128)]
    for row in rows:
        assert 0.8 < row["output_var"] < 1.25, row
    assert all(r["exported_var"] > 100 for r in rows if r["depth"] == 8)
