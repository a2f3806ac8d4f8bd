"""Prices: what each model costs, from the provider's `GET /models`, cached on disk for 24 h.

`PricingCache` knows the rates; `CostCalculator` turns a call's usage into USD. A model
with no price is an error before any call is made, never a silent $0.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import httpx
from pydantic import BaseModel, Field, ValidationError

from infra.errors import PricingError, PricingUnavailable, UnknownModel
from infra.storage import atomic_write_json

log = logging.getLogger("ar.pricing")

TTL_SECONDS = 24 * 3600
RETRY_SECONDS = 300  # after a failed refresh, the stale prices serve this long before trying again
# Two figures of one call's cost (the provider's and ours, or the ledger's and the provider's
# record) may differ by float rounding; more than this is a real difference.
COST_TOLERANCE_USD = 1e-9


def same_cost(a: float, b: float) -> bool:
    return abs(a - b) <= COST_TOLERANCE_USD + 1e-6 * max(abs(a), abs(b))


def _usd(value) -> float | None:
    """Prices come as strings of USD per unit ("0.0000003"); absent stays None."""
    if value is None or value == "":
        return None
    return float(value)


class ModelPrice(BaseModel):
    """USD per token (prompt, completion, cache, reasoning), per image, per request, per search."""

    prompt: float
    completion: float
    request: float = 0.0
    image: float = 0.0
    web_search: float = 0.0
    input_cache_read: float | None = None
    input_cache_write: float | None = None
    internal_reasoning: float | None = None
    discount: float = 0.0

    @property
    def cache_read_rate(self) -> float:
        """A cached prompt token: at the cache read price, or the prompt price if none."""
        return self.prompt if self.input_cache_read is None else self.input_cache_read

    @classmethod
    def from_openrouter(cls, pricing: dict) -> ModelPrice:
        values = {k: _usd(v) for k, v in pricing.items() if k in cls.model_fields}
        return cls(**{k: v for k, v in values.items() if v is not None})


class Usage(BaseModel):
    """A call's token counts. Cached and cache-write tokens are part of prompt_tokens;
    reasoning tokens are part of completion_tokens (OpenRouter's usage object)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    web_searches: int = 0
    cost: float | None = Field(None, description="the provider-reported cost in USD, if any")

    @classmethod
    def from_openrouter(cls, usage: dict, images: int = 0) -> Usage:
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        cost = usage.get("cost")
        return cls(
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            cached_tokens=prompt_details.get("cached_tokens") or 0,
            cache_write_tokens=prompt_details.get("cache_write_tokens") or 0,
            reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
            images=images,
            cost=float(cost) if cost is not None else None,
        )


def default_cache_dir() -> Path:
    if os.environ.get("AR_CACHE_DIR"):
        return Path(os.environ["AR_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ar"


class PricingCache:
    def __init__(self, base_url: str, cache_dir: Path | None = None, ttl_seconds: float = TTL_SECONDS,
                 timeout: float = 10.0, now=time.time):
        self.base_url = base_url.rstrip("/")
        digest = hashlib.sha256(self.base_url.encode()).hexdigest()[:16]
        self.path = (cache_dir or default_cache_dir()) / f"models-{digest}.json"
        self.ttl = ttl_seconds
        self.timeout = timeout
        self.now = now
        self._models: dict[str, ModelPrice] | None = None
        self._fetched_at = 0.0
        self._retry_at = 0.0

    def models(self) -> dict[str, ModelPrice]:
        if self._models is None or (self._age() > self.ttl and self.now() >= self._retry_at):
            self._load()
        return self._models

    def get(self, model: str) -> ModelPrice:
        models = self.models()
        if model not in models:
            close = difflib.get_close_matches(model, list(models), n=3, cutoff=0.6)
            hint = f"did you mean: {', '.join(close)}?" if close else "no model has a similar name"
            raise UnknownModel(f"unknown model {model!r} at {self.base_url} (no price known); {hint}")
        return models[model]

    def refresh(self) -> dict[str, ModelPrice]:
        """Fetch the price list now; on failure keep what is cached (and say how old)."""
        try:
            self._fetch()
        except PricingUnavailable as e:
            if not self._read_disk():
                raise
            log.warning("using prices cached %.1f h ago: refresh failed: %s", self._age() / 3600, e)
            self._retry_at = self.now() + RETRY_SECONDS
        return self._models

    def age_seconds(self) -> float:
        self.models()
        return self._age()

    def _age(self) -> float:
        return self.now() - self._fetched_at

    def _load(self) -> None:
        if self._read_disk() and self._age() <= self.ttl:
            return
        self.refresh()

    def _read_disk(self) -> bool:
        try:
            data = json.loads(self.path.read_bytes())
            models = {m: ModelPrice(**p) for m, p in data["models"].items()}
            fetched_at = float(data["fetched_at"])
        except FileNotFoundError:
            return False
        except (ValueError, KeyError, TypeError, ValidationError) as e:
            log.warning("ignoring unreadable price cache %s: %s", self.path, e)
            return False
        self._models, self._fetched_at = models, fetched_at
        return True

    def _fetch(self) -> None:
        url = f"{self.base_url}/models"
        try:
            response = httpx.get(url, timeout=self.timeout)
            response.raise_for_status()
            entries = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise PricingUnavailable(f"cannot read prices from {url}: {type(e).__name__}: {e}") from None
        models = {}
        for entry in entries:
            try:
                models[entry["id"]] = ModelPrice.from_openrouter(entry.get("pricing") or {})
            except (ValidationError, ValueError, KeyError, TypeError):
                continue  # a model without prompt and completion prices cannot be used: leave it out
        self._models, self._fetched_at = models, self.now()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, {"base_url": self.base_url, "fetched_at": self._fetched_at,
                                          "models": {m: p.model_dump() for m, p in models.items()}})
        except OSError as e:
            log.warning("cannot cache prices in %s: %s", self.path, e.strerror or e)


class CostCalculator:
    """USD of a usage at a model's prices; each token priced once.

    - cached and cache-write tokens are part of prompt_tokens: they are taken out of the
      prompt count and priced at the cache read / write price (the prompt price if none);
    - reasoning tokens are part of completion_tokens: priced at internal_reasoning when
      the model has such a price, otherwise at the completion price;
    - images, web searches and the per-request fee are added; then the discount applies.
    """

    def __init__(self, pricing: PricingCache):
        self.pricing = pricing

    def cost(self, model: str, usage: Usage) -> float:
        p = self.pricing.get(model)
        cache_write = p.prompt if p.input_cache_write is None else p.input_cache_write
        reasoning = p.internal_reasoning if p.internal_reasoning else p.completion
        plain_prompt = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
        plain_completion = usage.completion_tokens - usage.reasoning_tokens
        total = (plain_prompt * p.prompt + usage.cached_tokens * p.cache_read_rate
                 + usage.cache_write_tokens * cache_write + plain_completion * p.completion
                 + usage.reasoning_tokens * reasoning + usage.images * p.image
                 + usage.web_searches * p.web_search + p.request)
        return total * (1 - p.discount)

    def worst_case(self, model: str, prompt_tokens: int, max_tokens: int, images: int = 0) -> float:
        """The most a call can cost: every prompt token uncached, max_tokens at the dearest
        completion rate. Budgets reserve this before a call is sent."""
        p = self.pricing.get(model)
        out_rate = max(p.completion, p.internal_reasoning or 0.0)
        cache_write = max(p.prompt, p.input_cache_write or 0.0)
        total = prompt_tokens * cache_write + max_tokens * out_rate + images * p.image + p.request
        return total * (1 - p.discount)
