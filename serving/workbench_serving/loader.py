"""Import a model's function from a file of a build, with errors that name the problem."""

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path


class ModelLoadError(Exception):
    """The file or function cannot serve as a model; the message says why."""


def load_function(root: str | Path, file: str, function: str) -> Callable:
    """Import ``file`` (relative to ``root``) and return its ``function``.

    ``root`` goes first on ``sys.path`` so the file can import its neighbours. The function
    must be callable with exactly one positional argument (the request).
    """
    root = Path(root).resolve()
    path = (root / file).resolve()
    if not path.is_relative_to(root):
        raise ModelLoadError(f"file {file!r} lies outside the build")
    if path.suffix != ".py":
        raise ModelLoadError(f"file {file!r} is not a Python file (.py)")
    if not path.is_file():
        raise ModelLoadError(f"file {file!r} does not exist in the build")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    name = "_workbench_model_" + path.stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"importing {file!r} failed: {type(exc).__name__}: {exc}") from exc
    func = getattr(module, function, None)
    if func is None:
        raise ModelLoadError(f"{file!r} has no function {function!r}")
    if not callable(func):
        raise ModelLoadError(f"{function!r} in {file!r} is not a function")
    check_signature(func, function)
    return func


def check_signature(func: Callable, name: str) -> None:
    """Raise ModelLoadError unless ``func`` can be called as ``func(request)``."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins and some C callables: nothing to check
    try:
        signature.bind(object())
    except TypeError:
        params = ", ".join(str(p) for p in signature.parameters.values())
        raise ModelLoadError(
            f"function {name!r} must take one argument (the request), but its signature is"
            f" ({params})"
        ) from None
