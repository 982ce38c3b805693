"""Run a notebook for a job: ``python -m workbench_hub.jobs.notebook <input> <output_dir> <json>``.

Executes ``<input>`` with papermill in the current directory (the project) with the given
parameters and kernel, writing ``output.ipynb`` and ``output.html`` to ``<output_dir>``. Cell
output is echoed to the log as it comes. Exits 1 when a cell raises, with the error as the last
line of the log; the partly executed notebook is still written.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _to_html(notebook_path: Path, html_path: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(notebook_path, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(notebook)
    html_path.write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench_hub.jobs.notebook")
    parser.add_argument("input")
    parser.add_argument("output_dir")
    parser.add_argument("parameters", help="JSON object of parameters")
    parser.add_argument("--kernel", default="python3")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("papermill").setLevel(logging.INFO)

    # jsonschema (through nbformat) imports rfc3987_syntax when installed, which compiles a
    # grammar for ~3 s; notebook validation never checks the `iri` format it serves
    sys.modules.setdefault("rfc3987_syntax", None)
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / "output.ipynb"
    error = None
    try:
        papermill.execute_notebook(
            args.input,
            str(output),
            parameters=json.loads(args.parameters),
            kernel_name=args.kernel,
            cwd=os.getcwd(),
            log_output=True,
            progress_bar=False,
        )
    except PapermillExecutionError as e:
        error = f"cell {e.exec_count} raised {e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, bad notebook: report it like a cell error
        error = f"{type(e).__name__}: {e}"
    if output.exists():
        try:
            _to_html(output, output_dir / "output.html")
        except Exception as e:
            print(f"could not convert the notebook to HTML: {e}", flush=True)
    if error:
        print(f"notebook failed: {error}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
