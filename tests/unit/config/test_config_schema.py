"""docs/aiogate.schema.json: up to date with the models, and every shipped config matches it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from aiogate.config.schema import render

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_FILE = ROOT / "docs" / "aiogate.schema.json"
# A ```yaml block of the docs is a whole config when its top level has one of these keys;
# the other blocks are fragments of a section (a route, a health check ...).
_WHOLE_CONFIG_KEYS = {"server", "upstreams", "routes"}
_FENCE = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.S | re.M)


def _yaml(text: str) -> Any:
    return YAML(typ="safe").load(text)


def config_documents() -> Iterator[tuple[str, Any]]:
    """(where, data) of every config the project ships or shows."""
    yield "etc/aiogate.yaml", _yaml((ROOT / "etc/aiogate.yaml").read_text())
    for path in sorted((ROOT / "deploy").rglob("aiogate.yaml")):
        yield str(path.relative_to(ROOT)), _yaml(path.read_text())
    configmap = _yaml((ROOT / "deploy/kubernetes/configmap.yaml").read_text())
    yield "deploy/kubernetes/configmap.yaml", _yaml(configmap["data"]["aiogate.yaml"])
    values = _yaml((ROOT / "deploy/helm/aiogate/values.yaml").read_text())
    yield "deploy/helm/aiogate/values.yaml", values["config"]
    for doc in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]):
        for number, match in enumerate(_FENCE.finditer(doc.read_text()), 1):
            data = _yaml(match.group(1))
            if isinstance(data, dict) and _WHOLE_CONFIG_KEYS & data.keys():
                yield f"{doc.relative_to(ROOT)} (yaml block {number})", data


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text() == render(), "run `make schema` and commit the result"


def test_every_shipped_config_matches_the_schema(
    validator: jsonschema.Draft202012Validator,
) -> None:
    documents = list(config_documents())
    assert len(documents) >= 10  # the docs' whole configs were found
    problems = [
        f"{where}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
        for where, data in documents
        for error in validator.iter_errors(data)
    ]
    assert problems == []


@pytest.mark.parametrize(
    "text",
    [
        "server: {listn: ':8080'}",
        "server: {header_timeout: 5min}",
        "server: {max_body_size: 10XB}",
        "routes: [{path: /a}]",
        "routes: [{path: /a, upstream: a, methods: [GET], rate_limit: {requests: many}}]",
        "logging: {format: xml}",
    ],
)
def test_the_schema_rejects_what_check_rejects(
    validator: jsonschema.Draft202012Validator, text: str
) -> None:
    assert list(validator.iter_errors(_yaml(text)))


@pytest.mark.parametrize(
    "text",
    [
        "server: {listen: ':8080', header_timeout: 250ms, max_body_size: 64KiB, workers: 2}",
        "server: {header_timeout: 10, max_body_size: 1.5MiB}",
        "server: {workers: '${env:WORKERS:-1}'}",
        "routes: [{path: /a, upstreams: a, methods: GET, rate_limit: {limit: 1, window: 1s}}]",
        "upstreams: [{name: a, backends: [{url: 'http://127.0.0.1:1'}],"
        " health_check: {expected_statuses: ['200-299', 304]}}]",
    ],
)
def test_the_schema_accepts_every_spelling(
    validator: jsonschema.Draft202012Validator, text: str
) -> None:
    assert list(validator.iter_errors(_yaml(text))) == []
