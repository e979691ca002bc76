"""Scrape the real daemon's /metrics and look samples up by name and labels."""

from __future__ import annotations

import urllib.request

from gateway import Gateway
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]

    def has_family(self, name: str) -> bool:
        """The metric is exposed (`# TYPE` line), with or without samples yet."""
        return f"# TYPE {name} " in self.text


def scrape(gw: Gateway) -> Scrape:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as resp:
        return Scrape(resp.read().decode())
