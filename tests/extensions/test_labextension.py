"""The JupyterLab extension that `pip install` builds (`npm run build:prod` in extensions/)."""

import json
from pathlib import Path

import pytest

import workbench_lab

EXTENSIONS = Path(__file__).parents[2] / "extensions"


@pytest.mark.skipif(
    not (EXTENSIONS / "lib" / "index.js").exists(),
    reason="front end not built: run `npm install && npm run build:prod` in extensions/",
)
def test_build_output_is_where_jupyterlab_looks():
    (path,) = workbench_lab._jupyter_labextension_paths()
    labextension = Path(workbench_lab.__file__).parent / path["src"]
    package = json.loads((labextension / "package.json").read_text())
    assert package["name"] == path["dest"] == "@jupyter-workbench/lab"
    assert (labextension / package["jupyterlab"]["_build"]["load"]).is_file()
