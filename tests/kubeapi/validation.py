"""Validation: the OpenAPI schemas of ``kubernetes-validate`` plus the API server's own checks.

Schema validation uses the very schema files ``kubernetes_validate.validate(obj, version,
strict=True)`` reads (the ``-strict`` variants: unknown fields are errors), but compiles one
validator per (version, apiVersion, kind) with ``fastjsonschema`` and keeps it for the
process: ``kubernetes_validate.validate`` reloads a 1.8 MB definitions file on every call
(~70 ms), the compiled validator takes ~0.05 ms per pod. ``test_double.py`` checks both agree.

On top of the schema, the checks the API server itself does and clients trip over: names
(DNS-1123 subdomain / label, DNS-1035 label, path segment), label keys and values, pod
containers (names, images, unique names), Job restart policies and selector/template labels.
"""

from __future__ import annotations

import functools
import re

import fastjsonschema
from kubernetes_validate import utils as kv_utils

from tests.kubeapi.selectors import labels_match, selector_from_object

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)

Cause = tuple[str, str, str]  # (reason, field, message)


def _invalid(field: str, value, detail: str) -> Cause:
    return ("FieldValueInvalid", field, f'Invalid value: "{value}": {detail}')


def name_problems(name: str, rule: str, field: str = "metadata.name") -> list[Cause]:
    """Why ``name`` is not a valid object name under ``rule`` (see ResourceType.name_rule)."""
    if rule == "path":
        if name in (".", "..") or "/" in name or "%" in name:
            return [_invalid(field, name, 'may not be "." or ".." and may not contain "/" or "%"')]
        return []
    if rule == "subdomain":
        pattern, message, limit = _SUBDOMAIN, SUBDOMAIN_MSG, 253
    elif rule == "label":
        pattern, message, limit = _LABEL, LABEL_MSG, 63
    else:
        pattern, message, limit = _DNS1035, DNS1035_MSG, 63
    causes = []
    if len(name) > limit:
        causes.append(_invalid(field, name, f"must be no more than {limit} characters"))
    if not pattern.match(name):
        causes.append(_invalid(field, name, message))
    return causes


def label_problems(labels: dict | None, field: str) -> list[Cause]:
    causes: list[Cause] = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix))) or not (
            0 < len(name) <= 63 and _QUALIFIED_NAME.match(name)
        ):
            causes.append(_invalid(field, key, "name part must be a valid qualified name"))
        if not isinstance(value, str):
            continue
        if len(value) > 63:
            causes.append(_invalid(field, value, "must be no more than 63 characters"))
        elif not _LABEL_VALUE.match(value):
            causes.append(_invalid(field, value, LABEL_VALUE_MSG))
    return causes


def _template_problems(template: dict, field: str) -> list[Cause]:
    spec = template.get("spec") or {}
    causes = label_problems(
        (template.get("metadata") or {}).get("labels"), f"{field}.metadata.labels"
    )
    causes += pod_spec_problems(spec, f"{field}.spec")
    return causes


def pod_spec_problems(spec: dict, field: str = "spec") -> list[Cause]:
    causes: list[Cause] = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append(("FieldValueRequired", f"{field}.containers", "Required value"))
    seen: set[str] = set()
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or []):
            where = f"{field}.{kind}[{i}]"
            name = container.get("name") or ""
            if not name:
                causes.append(("FieldValueRequired", f"{where}.name", "Required value"))
            else:
                causes += name_problems(name, "label", f"{where}.name")
                if name in seen:
                    causes.append(
                        ("FieldValueDuplicate", f"{where}.name", f'Duplicate value: "{name}"')
                    )
                seen.add(name)
            if not container.get("image"):
                causes.append(("FieldValueRequired", f"{where}.image", "Required value"))
    return causes


def semantic_problems(resource: str, obj: dict) -> list[Cause]:
    """The API server's own validation for the kinds where clients commonly get it wrong."""
    meta = obj.get("metadata") or {}
    causes = label_problems(meta.get("labels"), "metadata.labels")
    spec = obj.get("spec") or {}
    if resource == "pods":
        causes += pod_spec_problems(spec)
    elif resource in ("jobs", "deployments", "replicasets"):
        template = spec.get("template") or {}
        causes += _template_problems(template, "spec.template")
        labels = (template.get("metadata") or {}).get("labels") or {}
        selector = spec.get("selector")
        if resource != "jobs" and not selector:
            causes.append(("FieldValueRequired", "spec.selector", "Required value"))
        elif selector and not labels_match(selector_from_object(selector), labels):
            causes.append(
                (
                    "FieldValueInvalid",
                    "spec.template.metadata.labels",
                    f"Invalid value: {labels}: `selector` does not match template `labels`",
                )
            )
        policy = (template.get("spec") or {}).get("restartPolicy")
        if resource == "jobs" and policy not in ("OnFailure", "Never"):
            causes.append(
                (
                    "FieldValueNotSupported",
                    "spec.template.spec.restartPolicy",
                    f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
                )
            )
        if resource != "jobs" and policy not in (None, "Always"):
            causes.append(
                (
                    "FieldValueNotSupported",
                    "spec.template.spec.restartPolicy",
                    f'Unsupported value: "{policy}": supported values: "Always"',
                )
            )
    return causes


# -- schemas -----------------------------------------------------------------------------------


def _schema_dir(version: str) -> str:
    if version.startswith("v"):
        version = version[1:]
    wanted = kv_utils.major_minor(version)
    candidates = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= wanted]
    if not candidates:
        raise ValueError(f"kubernetes-validate has no schemas for {version}")
    return f"kubernetes-json-schema/v{candidates[-1]}-local-strict"


@functools.cache
def _definitions(schema_dir: str) -> dict:
    return kv_utils.schema_contents(f"{schema_dir}/_definitions.json", schema_dir)["$defs"]


def _rewrite(node, in_properties: bool = False):
    """Drop descriptions and point every $ref at ``#/definitions/<name>``."""
    if isinstance(node, list):
        return [_rewrite(n) for n in node]
    if not isinstance(node, dict):
        return node
    if in_properties:
        return {k: _rewrite(v) for k, v in node.items()}
    out = {}
    for key, value in node.items():
        if key in ("description", "$schema", "$id"):
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = "#/definitions/" + value.rsplit("/", 1)[1]
        else:
            out[key] = _rewrite(value, key in ("properties", "$defs"))
    return out


def _collect_refs(node, defs: dict, found: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _collect_refs(item, defs, found)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                name = value.rsplit("/", 1)[1]
                if name not in found:
                    found.add(name)
                    _collect_refs(defs[name], defs, found)
            else:
                _collect_refs(value, defs, found)


@functools.cache
def schema_validator(version: str, api_version: str, kind: str):
    """A compiled validator for one kind (cached for the process); None if no schema exists."""
    schema_dir = _schema_dir(version)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        raw = kv_utils.schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        return None
    definitions = _definitions(schema_dir)
    schema = _rewrite(raw)
    used: set[str] = set()
    _collect_refs(schema, definitions, used)
    schema["definitions"] = {name: _rewrite(definitions[name]) for name in sorted(used)}
    return fastjsonschema.compile(schema)


def _field(path: list) -> str:
    out = ""
    for part in path[1:]:  # path[0] is "data"
        out += f"[{part}]" if str(part).isdigit() else f".{part}"
    return out.lstrip(".")


def schema_problems(version: str, obj: dict) -> list[Cause]:
    """Schema errors of ``obj`` (the first one, as fastjsonschema stops there)."""
    validator = schema_validator(version, obj.get("apiVersion", ""), obj.get("kind", ""))
    if validator is None:
        return []
    try:
        validator(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        field = _field(exc.path)
        if exc.rule == "additionalProperties":
            names = re.findall(r"'([^']+)'", exc.message.rsplit("must not contain", 1)[1])
            unknown = ".".join(filter(None, [field, names[0] if names else ""]))
            return [("FieldValueInvalid", unknown, f'Invalid value: unknown field "{unknown}"')]
        if exc.rule == "required":
            names = re.findall(r"'([^']+)'", exc.message.rsplit("must contain", 1)[1])
            missing = ".".join(filter(None, [field, names[0] if names else ""]))
            return [("FieldValueRequired", missing, "Required value")]
        detail = exc.message.replace(exc.name, field or "<root>", 1)
        return [("FieldValueInvalid", field, f"Invalid value: {exc.value!r}: {detail}")]
    return []
