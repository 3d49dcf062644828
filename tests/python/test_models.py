"""`GET /v1/models` and `GET /v1/models/{id}`: every configured model and alias, with exact
prices (JSON numbers, read as decimals so 0.22 must be written as 0.22), limits and `alias_of`."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest

from harness import ALIASES, CREATED, LIMITS, MODEL_IDS, OWNED_BY, PRICES, auth


def get_json(gateway, key, path: str) -> tuple[int, dict]:
    r = httpx.get(f"{gateway.base_url}{path}", headers=auth(key), timeout=30)
    return r.status_code, json.loads(r.text, parse_float=Decimal)


def expected_entry(model_id: str) -> dict:
    target = ALIASES.get(model_id, model_id)
    input_price, cached, output = PRICES[target]
    context_length, max_output = LIMITS[target]
    return {
        "id": model_id,
        "object": "model",
        "pricing": {"input": Decimal(input_price), "cached_input": Decimal(cached), "output": Decimal(output)},
        "context_length": context_length,
        "max_output_tokens": max_output,
        "alias_of": ALIASES.get(model_id),
        "owned_by": OWNED_BY[target],
    }


def check_entry(entry: dict) -> None:
    want = expected_entry(entry["id"])
    assert entry["object"] == "model"
    assert isinstance(entry["created"], int)
    if entry["id"] in MODEL_IDS:
        assert entry["created"] == CREATED
    assert entry["owned_by"] == want["owned_by"]
    pricing = entry["pricing"]
    for field in ("input", "cached_input", "output"):
        value = pricing[field]
        assert isinstance(value, Decimal), f"{entry['id']} pricing.{field} is not a JSON number: {value!r}"
        assert value == want["pricing"][field], f"{entry['id']} pricing.{field}: {value} != {want['pricing'][field]}"
    assert entry["context_length"] == want["context_length"]
    assert entry["max_output_tokens"] == want["max_output_tokens"]
    assert entry.get("alias_of") == want["alias_of"]


def test_list_has_every_model_and_alias_with_exact_prices(gateway, key):
    status, body = get_json(gateway, key, "/models")
    assert status == 200
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert len(ids) == len(set(ids)), f"duplicates in {ids}"
    assert set(ids) == MODEL_IDS | set(ALIASES)
    for entry in body["data"]:
        check_entry(entry)


def test_flash_prices_are_the_published_ones(gateway, key):
    def prices(model_id):
        _, body = get_json(gateway, key, f"/models/{model_id}")
        return {k: body["pricing"][k] for k in ("input", "cached_input", "output")}

    assert prices("deepseek-v4-flash") == {"input": Decimal("0.22"), "cached_input": Decimal("0.005"), "output": Decimal("0.44")}
    assert prices("deepseek-v4-pro") == {"input": Decimal("2.80"), "cached_input": Decimal("0.024"), "output": Decimal("5.60")}


@pytest.mark.parametrize("model_id", ["deepseek-v4-flash", "deepseek-v4-pro", "gpt-4.1-mini", "deepseek-reasoner", "gpt-4o"])
def test_retrieve_returns_the_same_entry_as_the_list(gateway, key, model_id):
    status, entry = get_json(gateway, key, f"/models/{model_id}")
    assert status == 200
    check_entry(entry)
    _, listing = get_json(gateway, key, "/models")
    assert entry == next(m for m in listing["data"] if m["id"] == model_id)


def test_sdk_lists_and_retrieves(client):
    ids = {m.id for m in client.models.list()}
    assert ids == MODEL_IDS | set(ALIASES)
    model = client.models.retrieve("deepseek-chat")
    assert model.id == "deepseek-chat"
    assert model.object == "model"
    assert (model.model_extra or {}).get("alias_of") == "deepseek-v4-flash"


def test_unknown_model_is_404_not_found_error(gateway, key, client):
    status, body = get_json(gateway, key, "/models/no-such-model")
    assert status == 404
    assert body["error"]["type"] == "not_found_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_the_catalogue_is_public(gateway, key):
    """`/v1/models` needs no key (prices are public information): the same answers without an
    `Authorization` header, and with a key that does not exist."""
    for path in ("/models", "/models/deepseek-chat"):
        with_key = get_json(gateway, key, path)
        for headers in ({}, auth("sk-not-a-real-key-000000000")):
            r = httpx.get(f"{gateway.base_url}{path}", headers=headers, timeout=30)
            assert (r.status_code, json.loads(r.text, parse_float=Decimal)) == with_key, (path, headers, r.text)
    assert get_json(gateway, key, "/models")[0] == 200
