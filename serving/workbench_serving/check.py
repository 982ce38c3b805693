"""Check that a build can serve its function: ``python -m workbench_serving.check``.

Run by the build step (:mod:`workbench_serving.build`) with the build's Python, in the build's
``src/`` directory::

    python -m workbench_serving.check --file model.py --function predict

imports the file as a replica would (:func:`workbench_serving.loader.load_function`) and
exits 0 when the function can be called with one argument. Otherwise it exits 1 and its last
line is ``error: <why>`` (missing file, missing function, wrong signature, import failure).
"""

import argparse
import inspect
import sys

from workbench_serving.loader import ModelLoadError, load_function

ERROR_PREFIX = "error: "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workbench_serving.check",
        description="Import a model's function the way a replica does, or say why it fails.",
    )
    parser.add_argument("--file", required=True, help="the model's file, relative to --root")
    parser.add_argument("--function", required=True, help="the function serving requests")
    parser.add_argument("--root", default=".", help="the build's src/ directory (default: .)")
    args = parser.parse_args(argv)
    try:
        func = load_function(args.root, args.file, args.function)
    except ModelLoadError as e:
        message = str(e)
    except SystemExit as e:  # the file calls sys.exit() (or exit()) while it is imported
        message = f"importing {args.file!r} called sys.exit({e.code!r})"
    else:
        try:
            signature = str(inspect.signature(func))
        except (TypeError, ValueError):
            signature = "(…)"
        print(f"check: {args.function}{signature} in {args.file} can serve requests", flush=True)
        return 0
    print(ERROR_PREFIX + message, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
