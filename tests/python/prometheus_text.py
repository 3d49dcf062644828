"""A process's `/metrics`, read with the Prometheus project's own text parser
(`prometheus_client.parser`), and sums over its samples by label."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 30


def scrape(base: str) -> dict[str, list]:
    """`GET {base}/metrics` as {sample name: samples} (counters under their `_total` name,
    histograms under `_bucket`, `_count` and `_sum`)."""
    resp = httpx.get(f"{base}/metrics", timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))
