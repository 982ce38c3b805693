"""The three PATCH flavours the API server accepts for built-in types.

* JSON merge patch (RFC 7386): maps merge, ``null`` deletes, lists are replaced.
* Strategic merge patch: like merge patch, but lists of objects with a merge key (containers,
  env, volumes, volumeMounts, ports, ...) are merged item by item, ``finalizers`` are merged
  as sets, and the ``$patch: delete|replace`` directives work. Other lists are replaced.
* JSON patch (RFC 6902): add, remove, replace, move, copy, test.

Errors raise :class:`PatchError`, which the server answers with 422 as the real one does.
"""

from __future__ import annotations

import copy

#: list field -> merge key, as declared by ``x-kubernetes-patch-merge-key`` in the API types.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "resourceClaims": "name",
    "readinessGates": "conditionType",
    "topologySpreadConstraints": "topologyKey",
}
#: lists of primitives merged as sets
SET_LISTS = {"finalizers"}


class PatchError(ValueError):
    """A patch that cannot be applied to the object."""


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _ports_key(items: list) -> str:
    return (
        "containerPort"
        if any("containerPort" in i for i in items if isinstance(i, dict))
        else "port"
    )


def _merge_list(field: str, target: list, patch: list) -> list:
    if field in SET_LISTS:
        return list(target) + [v for v in patch if v not in target]
    key = MERGE_KEYS.get(field)
    if field == "ports":
        key = _ports_key(target + patch)
    if not key or not all(isinstance(i, dict) for i in patch):
        return [strategic_merge_patch(None, i) for i in patch]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [strategic_merge_patch(None, i) for i in patch if i.get("$patch") != "replace"]
    result = [copy.deepcopy(i) for i in target]
    for item in patch:
        index = next(
            (
                n
                for n, old in enumerate(result)
                if isinstance(old, dict) and old.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch(None, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def strategic_merge_patch(target, patch):
    """Kubernetes strategic merge patch, with the merge keys of the built-in types."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        target = {}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = _merge_list(key, [], value)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc, parts: list[str], path: str):
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise PatchError(f"doc is missing path: {path!r}") from None
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return node


def _get(doc, path: str):
    parts = _pointer(path)
    if not parts:
        return doc
    node, last = _parent(doc, parts, path), parts[-1]
    try:
        return node[int(last)] if isinstance(node, list) else node[last]
    except (KeyError, ValueError, IndexError, TypeError):
        raise PatchError(f"doc is missing key: {path!r}") from None


def _remove(doc, path: str):
    parts = _pointer(path)
    node, last = _parent(doc, parts, path), parts[-1]
    try:
        return node.pop(int(last) if isinstance(node, list) else last)
    except (KeyError, ValueError, IndexError):
        raise PatchError(f"unable to remove nonexistent key: {path!r}") from None


def _add(doc, path: str, value, replace: bool = False):
    parts = _pointer(path)
    if not parts:
        return value
    node, last = _parent(doc, parts, path), parts[-1]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if index > len(node) or (replace and index >= len(node)):
            raise PatchError(f"index out of range: {path!r}")
        if replace:
            node[index] = value
        else:
            node.insert(index, value)
    elif isinstance(node, dict):
        if replace and last not in node:
            raise PatchError(f"doc is missing key: {path!r}")
        node[last] = value
    else:
        raise PatchError(f"doc is missing path: {path!r}")
    return doc


def json_patch(target, operations):
    """RFC 6902."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "move":
            doc = _add(doc, path, _remove(doc, op["from"]))
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path!r} failed")
        else:
            raise PatchError(f"unexpected kind of patch operation: {kind!r}")
    return doc
