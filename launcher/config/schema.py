"""JSON Schema validation of the cluster config, with errors a person can act on.

schemas/cluster.schema.json is the document; its `provider` block refers to
`urn:corral:provider` and each node type's `node_config` to `urn:corral:node-config`.
Both are bound per provider type to schemas/provider-<type>.schema.json (the block itself,
and its `$defs.node_config` if it has one), so a new provider plugs in by adding a file.
Schemas and validators are loaded once per process.
"""
from __future__ import annotations

import difflib
import functools
import json
import math
import re
from typing import Any, Iterator

from launcher import resources

SCHEMA_DIR = resources.schema_dir()

PROVIDER_URI = "urn:corral:provider"
NODE_CONFIG_URI = "urn:corral:node-config"
_ANY_PROVIDER = {"type": "object",
                 "properties": {"type": {"type": "string"}}}
_ANY_NODE_CONFIG = {"type": "object"}

# Keys Ray's cluster YAML has that corral does not, with what to do instead.
RAY_ONLY_KEYS = {
    "docker": "Ray's docker block is not supported; start containers from setup_commands",
    "cluster_synced_files": "not supported; list the files in file_mounts",
    "file_mounts_sync_continuously": "not supported; re-run `corral up` to sync file_mounts",
    "rsync_filter": "not supported; list the patterns to skip in rsync_exclude",
    "min_workers": "Ray's legacy top-level key; set min_workers per node type "
                   "in available_node_types",
    "head_node": "Ray's legacy key; describe the head in available_node_types "
                 "and name it in head_node_type",
    "worker_nodes": "Ray's legacy key; describe workers in available_node_types",
    "initial_workers": "Ray's legacy key; use min_workers per node type",
    "autoscaling_mode": "Ray's legacy key; not used, remove it",
    "target_utilization_fraction": "Ray's legacy key; use upscaling_speed",
    "no_restart": "use `corral up --no-restart` instead",
    "restart_only": "use `corral up --restart-only` instead",
    "worker_default_node_type": "Ray's legacy key; not used, remove it",
}

_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "object": "a mapping", "array": "a list",
               "null": "nothing"}
_PLURAL_WORDS = {"integer": "integers", "number": "numbers", "string": "strings",
                 "boolean": "booleans", "object": "mappings", "array": "lists"}


def known_provider_types() -> list[str]:
    return sorted(path.name[len("provider-"):-len(".schema.json")]
                  for path in SCHEMA_DIR.glob("provider-*.schema.json"))


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    with open(SCHEMA_DIR / name, encoding="utf-8") as file:
        return json.load(file)


@functools.lru_cache(maxsize=None)
def validator_for(provider_type: str | None):
    """The cluster validator with `provider` bound to that type's schema (or, for an
    unknown type, a permissive one: the unknown type is reported on its own)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    provider_schema, node_config_schema = _ANY_PROVIDER, _ANY_NODE_CONFIG
    if provider_type in known_provider_types():
        provider_schema = load_schema(f"provider-{provider_type}.schema.json")
        if "node_config" in provider_schema.get("$defs", {}):
            node_config_schema = {"$ref": f"{PROVIDER_URI}#/$defs/node_config"}
    provider_resource = DRAFT202012.create_resource(provider_schema)
    resources = [(PROVIDER_URI, provider_resource),
                 (NODE_CONFIG_URI, DRAFT202012.create_resource(node_config_schema))]
    if provider_schema.get("$id"):
        resources.append((provider_schema["$id"], provider_resource))
    registry = Registry().with_resources(resources)
    return Draft202012Validator(load_schema("cluster.schema.json"), registry=registry)


def schema_problems(document: dict, provider_type: str | None) -> list[tuple[tuple, str]]:
    """Every schema violation as (path, message), deduplicated, in document order."""
    problems: list[tuple[tuple, str]] = list(_not_a_number((), document))
    for error in validator_for(provider_type).iter_errors(document):
        for problem in _explain(error):
            if problem not in problems:
                problems.append(problem)
    return problems


def _not_a_number(path: tuple, value: Any) -> Iterator[tuple[tuple, str]]:
    """.nan passes every bound in JSON Schema (all comparisons are false); refuse it."""
    if isinstance(value, float) and math.isnan(value):
        yield path, "expected a number, got .nan"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _not_a_number(path + (key,), item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _not_a_number(path + (index,), item)


def _explain(error) -> Iterator[tuple[tuple, str]]:
    path, schema, instance = tuple(error.absolute_path), error.schema, error.instance
    kind = error.validator
    if "propertyNames" in error.absolute_schema_path and isinstance(instance, str):
        # jsonschema reports a bad key at its mapping's path, with the key as instance
        yield path + (instance,), f"invalid name {show(instance)}: expected {describe(schema)}"
    elif kind == "additionalProperties" and isinstance(instance, dict):
        allowed = list(schema.get("properties", {}))
        patterns = [re.compile(pattern) for pattern in schema.get("patternProperties", {})]
        for key in instance:
            if key not in allowed and not any(pattern.search(key) for pattern in patterns):
                yield path + (key,), unknown_key_message(key, allowed, at_top=not path)
    elif kind == "required" and isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                expected = schema.get("properties", {}).get(key)
                words = describe(expected) if expected else "a value"
                hint = f" ({words})" if words != "a value" else ""
                yield path + (key,), f"missing required key {key!r}{hint}"
    elif kind in ("enum", "const"):
        message = f"expected {describe(schema)}, got {show(instance)}"
        choices = schema.get("enum", [schema.get("const")])
        yield path, message + did_you_mean(instance, [c for c in choices if isinstance(c, str)])
    elif kind in ("oneOf", "anyOf"):
        yield from _explain_alternatives(error)
    elif kind == "minProperties":
        yield path, f"expected {describe(schema)}, got an empty mapping"
    elif kind == "minItems":
        yield path, f"expected {describe(schema)}, got an empty list"
    elif kind == "uniqueItems":
        yield path, "expected each entry once, got duplicates"
    elif kind == "type" and "x-expected" not in schema:  # bounds, not length or pattern
        only_type = {key: schema[key] for key in ("type", "items", "minimum", "maximum",
                                                   "exclusiveMinimum", "exclusiveMaximum")
                     if key in schema}
        yield path, f"expected {describe(only_type)}, got {show(instance)}" + _number_hint(
            instance, schema)
    elif kind in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                  "minLength", "maxLength", "pattern", "multipleOf", "format"):
        yield path, f"expected {describe(schema)}, got {show(instance)}"
    else:  # a keyword we have no wording for: jsonschema's own sentence
        yield path, error.message


def _explain_alternatives(error) -> Iterator[tuple[tuple, str]]:
    """For `oneOf: [string, list of strings]`: if the value has the type of exactly one
    alternative, explain what is wrong inside that one; otherwise list the alternatives."""
    choices = error.schema[error.validator]
    wrong_type = {tuple(sub.relative_schema_path)[0] for sub in error.context
                  if tuple(sub.relative_schema_path)[1:] == ("type",)}
    fitting = [index for index in range(len(choices)) if index not in wrong_type]
    if len(fitting) == 1:
        inner = [sub for sub in error.context if sub.relative_schema_path[0] == fitting[0]]
        if inner:
            for sub in inner:
                yield from _explain(sub)
            return
    words = " or ".join(describe(choice) for choice in choices)
    yield tuple(error.absolute_path), f"expected {words}, got {show(error.instance)}"


def _number_hint(instance: Any, schema: dict) -> str:
    """'16e9' or '"4"' where a number belongs: YAML read it as text."""
    wanted = schema.get("type")
    if not isinstance(instance, str) or wanted not in ("number", "integer"):
        return ""
    try:
        float(instance)
    except ValueError:
        return ""
    return (" (text, not a number: drop any quotes; YAML reads 1e9 as text, "
            "write 1.0e+9 or 1000000000)")


def unknown_key_message(key: str, allowed: list[str], at_top: bool = False) -> str:
    message = f"unknown key {key!r}"
    if at_top and key in RAY_ONLY_KEYS:
        return f"{message}: {RAY_ONLY_KEYS[key]}"
    hint = did_you_mean(key, allowed)
    if hint:
        return message + hint
    if allowed:
        return f"{message}; allowed here: {', '.join(allowed)}"
    return f"{message}; nothing else is allowed here"


def did_you_mean(word: Any, choices: list[str]) -> str:
    if not isinstance(word, str) or not choices:
        return ""
    folded = {choice.lower().replace("-", "_"): choice for choice in choices}
    exact = folded.get(word.lower().replace("-", "_"))
    if exact and exact != word:
        return f"; did you mean {exact!r}?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def describe(schema: Any) -> str:
    """What a schema expects, in words: 'an integer >= 0', 'a list of strings'."""
    if not isinstance(schema, dict):
        return "a valid value"
    if "x-expected" in schema:
        return schema["x-expected"]
    if "const" in schema:
        return show(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(show(choice) for choice in schema["enum"])
    types = schema.get("type")
    if isinstance(types, list):
        words = [_TYPE_WORDS.get(name, name) for name in types if name != "null"]
        text = " or ".join(words) or "nothing"
    elif types == "array" and isinstance(schema.get("items"), dict):
        item_type = schema["items"].get("type")
        text = f"a list of {_PLURAL_WORDS.get(item_type, 'values')}" if isinstance(
            item_type, str) else "a list"
    elif types == "string" and schema.get("minLength") == 1:
        text = "a non-empty string"
    else:
        text = _TYPE_WORDS.get(types, "a value") if types else "a value"
    bounds = [f"{symbol} {schema[key]}" for key, symbol in (
        ("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
        ("exclusiveMaximum", "<")) if key in schema]
    if bounds:
        text += " " + " and ".join(bounds)
    if "maxLength" in schema:
        text += f" of at most {schema['maxLength']} characters"
    if "pattern" in schema:
        text += f" matching {schema['pattern']}"
    if "minProperties" in schema and types == "object":
        text += " with at least one entry"
    if schema.get("minItems") == 1:
        text += " with at least one entry"
    elif "minItems" in schema:
        text += f" with at least {schema['minItems']} entries"
    return text


def show(value: Any) -> str:
    """A value as the user wrote it, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"{value} (a {type(value).__name__})"
