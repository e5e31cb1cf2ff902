"""A rough USD cost estimate from token usage, for the runner's per-turn progress logs only.

The CLI reports the authoritative `total_cost_usd` (and enforces `maxBudgetUsd`) itself; it does
not expose cost mid-query, so `kubectl logs -f` shows this estimate until the result arrives.
"""

from __future__ import annotations

from collections.abc import Mapping

# USD per million tokens (input, output) by model family; unknown models price as sonnet.
_PRICES_PER_MTOK = {
    "opus": (5.0, 25.0),
    "sonnet": (3.0, 15.0),
    "haiku": (1.0, 5.0),
}
_CACHE_WRITE_FACTOR = 1.25
_CACHE_READ_FACTOR = 0.1


def estimate_cost_usd(model: str, usage: Mapping[str, int]) -> float:
    family = next((f for f in _PRICES_PER_MTOK if f in model.lower()), "sonnet")
    input_price, output_price = _PRICES_PER_MTOK[family]
    tokens_in = usage.get("input_tokens", 0)
    tokens_out = usage.get("output_tokens", 0)
    cache_write = usage.get("cache_creation_input_tokens", 0)
    cache_read = usage.get("cache_read_input_tokens", 0)
    dollars = (
        tokens_in * input_price
        + tokens_out * output_price
        + cache_write * input_price * _CACHE_WRITE_FACTOR
        + cache_read * input_price * _CACHE_READ_FACTOR
    )
    return dollars / 1_000_000
