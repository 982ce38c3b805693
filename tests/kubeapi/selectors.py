"""Label selectors (query strings and LabelSelector objects) and field selectors."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.kubeapi.errors import bad_request

Requirement = tuple[str, str, frozenset[str]]  # (key, operator, values)

_SET_TERM = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_TERM = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


def parse_label_selector(selector: str | None) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (f,g),h notin (i),j,!k``; 400 BadRequest when malformed."""
    requirements: list[Requirement] = []
    for term in _split_terms(selector or ""):
        match = _EQ_TERM.match(term)
        if match:
            key, op, value = match.groups()
            requirements.append((key, "!=" if op == "!=" else "=", frozenset([value])))
            continue
        match = _SET_TERM.match(term)
        if not match or (match.group(1) and match.group(3)):
            raise bad_request(f"unable to parse requirement: found '{term.strip()}'")
        negate, key, op, values = match.groups()
        if op:
            parsed = frozenset(v.strip() for v in values.split(",") if v.strip())
            requirements.append((key, op, parsed))
        else:
            requirements.append((key, "!" if negate else "exists", frozenset()))
    return requirements


def selector_from_object(selector: dict | None) -> list[Requirement]:
    """Requirements from a LabelSelector object (matchLabels + matchExpressions)."""
    selector = selector or {}
    requirements: list[Requirement] = [
        (k, "=", frozenset([v])) for k, v in (selector.get("matchLabels") or {}).items()
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        requirements.append(
            (expr["key"], ops[expr["operator"]], frozenset(expr.get("values") or []))
        )
    return requirements


def labels_match(requirements: list[Requirement], labels: dict | None) -> bool:
    labels = labels or {}
    for key, op, values in requirements:
        present = key in labels
        if op == "=" or op == "in":
            if not present or labels[key] not in values:
                return False
        elif op == "!=" or op == "notin":
            if present and labels[key] in values:
                return False
        elif op == "exists":
            if not present:
                return False
        elif present:  # "!"
            return False
    return True


def _path_getter(*path: str) -> Callable[[dict], str]:
    def get(obj: dict) -> str:
        value = obj
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return "" if value is None else str(value)

    return get


_COMMON_FIELDS = {
    "metadata.name": _path_getter("metadata", "name"),
    "metadata.namespace": _path_getter("metadata", "namespace"),
}
_FIELDS: dict[str, dict[str, Callable[[dict], str]]] = {
    "pods": {
        f: _path_getter(*f.split("."))
        for f in (
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        )
    },
    "events": {
        **{
            f: _path_getter(*f.split("."))
            for f in (
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "type",
            )
        },
        "source": _path_getter("source", "component"),
    },
    "secrets": {"type": _path_getter("type")},
    "namespaces": {"status.phase": _path_getter("status", "phase")},
    "jobs": {"status.successful": _path_getter("status", "succeeded")},
    "replicasets": {"status.replicas": _path_getter("status", "replicas")},
}

FieldRequirement = tuple[Callable[[dict], str], bool, str]  # (getter, equal?, value)


def parse_field_selector(resource: str, selector: str | None) -> list[FieldRequirement]:
    """Parse ``a=b,c!=d`` over the fields the real server supports for ``resource``."""
    supported = {**_COMMON_FIELDS, **_FIELDS.get(resource, {})}
    requirements: list[FieldRequirement] = []
    for term in _split_terms(selector or ""):
        match = _EQ_TERM.match(term)
        if not match:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
        field, op, value = match.groups()
        if field not in supported:
            raise bad_request(f"field label not supported: {field}")
        requirements.append((supported[field], op != "!=", value))
    return requirements


def fields_match(requirements: list[FieldRequirement], obj: dict) -> bool:
    return all((get(obj) == value) == equal for get, equal, value in requirements)
