"""The JSON Schema of the config file, generated from the models.

`python -m aiogate.config.schema` prints it; `make schema` writes it to docs/aiogate.schema.json,
which editors use for completion and checks (docs/configuration.md, "Editor support"). The
schema describes what the file may *say*, so it is wider than the models' types in three ways:

- durations and sizes are numbers or strings such as `10s` and `64KiB`;
- a list that also takes a single item (`methods: GET`) says so;
- any number or boolean may be a `${env:NAME}` / `${file:PATH}` reference, resolved at load;
- a key with two spellings (`upstream` / `upstreams`, `limit` / `requests`) takes either.

`aiogate check` stays the authority: cross-section checks (an unknown upstream, a duplicate
route) and values read from the environment are beyond a schema.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .model import GatewayConfig

__all__ = ["SCHEMA_ID", "config_schema", "main", "render"]

SCHEMA_ID = "https://github.com/aiogate/aiogate/blob/main/docs/aiogate.schema.json"
_REFERENCE = {"type": "string", "pattern": r"\$\{(env|file):[^}]*\}"}
# pydantic writes a numeric bound it cannot place on a union (a duration's `> 0`) as these
# keys, which are not JSON Schema; the bound is enforced by `aiogate check`.
_NON_STANDARD = ("gt", "ge", "lt", "le")


class _ConfigSchema(GenerateJsonSchema):
    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        generated = super().function_before_schema(schema)
        # A list behind a before-validator is one that also takes a single item.
        if generated.get("type") == "array" and "items" in generated:
            single = generated["items"]
            return {"anyOf": [single, {k: v for k, v in generated.items() if k != "default"}]}
        return generated


def config_schema() -> dict[str, Any]:
    """The schema of a config file, as a JSON-ready dict."""
    schema = GatewayConfig.model_json_schema(mode="validation", schema_generator=_ConfigSchema)
    _spellings(schema["$defs"])
    schema = _widen(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "aiogate configuration",
    }


def _spellings(definitions: dict[str, Any]) -> None:
    """Every spelling of a field with several (pydantic lists only the first)."""
    for model in _models(GatewayConfig):
        definition = definitions.get(model.__name__)
        if definition is None:
            continue
        for field in model.model_fields.values():
            choices = field.validation_alias
            if not isinstance(choices, AliasChoices):
                continue
            names = [c for c in choices.choices if isinstance(c, str)]
            properties = definition["properties"]
            for name in names[1:]:
                properties[name] = properties[names[0]]
            required = definition.get("required", [])
            if names[0] in required:
                required.remove(names[0])
                if not required:
                    del definition["required"]
                definition.setdefault("allOf", []).append(
                    {"oneOf": [{"required": [name]} for name in names]}
                )


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """`root` and every model its fields can hold, each once."""
    found: list[type[BaseModel]] = []
    pending = [root]
    while pending:
        model = pending.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            pending += _nested(field.annotation)
    return found


def _nested(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _nested(arg)]


def _widen(node: Any) -> Any:
    """Allow `${env:...}` for numbers and booleans; drop the keys JSON Schema does not know."""
    if isinstance(node, list):
        return [_widen(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _widen(v) for k, v in node.items() if k not in _NON_STANDARD}
    if node.get("type") in ("integer", "number", "boolean"):
        keep = {k: node.pop(k) for k in ("default", "title", "description") if k in node}
        return {"anyOf": [node, _REFERENCE], **keep}
    return node


def render() -> str:
    """The schema as committed: stable key order, two-space indent, one trailing newline."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aiogate.config.schema", description="Print or write the config's schema."
    )
    parser.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
