"""The detection event contract: ``edge/schemas/event.schema.json`` and a validator for it.

The cloud ingest Lambda must validate with nothing but the Lambda runtime, so this is a small
validator for exactly the JSON Schema keywords the schema uses (type, const, enum, pattern,
required, additionalProperties, properties, items, min/max, length, oneOf). The test suite checks
it agrees with the reference ``jsonschema`` implementation.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schemas") / "event.schema.json"
SCHEMA_VERSION = 1


class EventError(ValueError):
    """An event that does not satisfy the schema; the message gives the JSON path."""


@cache
def event_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    # JSON Schema (ECMA-262) "$" matches only at the very end; Python's "$" also matches
    # before a final newline, which would let "pujalt\n" through as an observatory id.
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def _check(value: Any, schema: dict[str, Any], path: str) -> None:
    if "oneOf" in schema:
        errors = []
        for option in schema["oneOf"]:
            try:
                _check(value, option, path)
            except EventError as exc:
                errors.append(str(exc))
        if len(errors) != len(schema["oneOf"]) - 1:
            raise EventError(f"{path}: matches none of the allowed forms ({'; '.join(errors)})")
        return
    if "const" in schema and (value != schema["const"] or type(value) is not type(
        schema["const"]
    )):
        raise EventError(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise EventError(f"{path}: must be one of {schema['enum']}")
    kind = schema.get("type")
    if kind and not _is_type(value, kind):
        raise EventError(f"{path}: expected {kind}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise EventError(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            raise EventError(f"{path}: does not match {schema['pattern']}")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            raise EventError(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise EventError(f"{path}: above {schema['maximum']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise EventError(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise EventError(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            _check(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise EventError(f"{path}: missing {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{path}.{key}")
            elif extra is False:
                raise EventError(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}.{key}")


def validate_event(event: Any) -> dict[str, Any]:
    """Return the event if it satisfies the schema, else raise EventError."""
    _check(event, event_schema(), "$")
    return event
