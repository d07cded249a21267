"""A torchvision that does not match torch is named as such in one line (exit 3), not a traceback."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from contrastive.environment import installation_problem

BROKEN_TORCHVISION = 'raise RuntimeError("operator torchvision::nms does not exist")\n'


def test_a_mismatched_torchvision_is_one_line_naming_both_versions(tmp_path: Path) -> None:
    """``import torchvision`` fails as it does with a CUDA torchvision on a CPU torch."""
    shim = tmp_path / "shim" / "torchvision"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(BROKEN_TORCHVISION)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        # a dry run reaches the image decoder (torchvision.io); validate no longer imports torchvision
        [sys.executable, "-m", "contrastive", "run", "digits_1pct", "--dry-run", "--run-dir", "run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    torch_version = importlib.metadata.version("torch")
    vision_version = importlib.metadata.version("torchvision")
    assert f"torchvision {vision_version} does not work with torch {torch_version}" in lines[0]
    assert "operator torchvision::nms does not exist" in lines[0]
    assert "pip install --force-reinstall torch torchvision --index-url" in lines[0]


def test_other_failures_are_not_blamed_on_the_installation() -> None:
    assert installation_problem(RuntimeError("shape mismatch")) is None
    # torchvision imports here: an error that mentions it is still not an installation problem
    assert installation_problem(ValueError("torchvision transform got a bad size")) is None
