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
from pydantic import BaseModel, Field, ValidationError, model_validator

from infra.errors import PricingUnavailable, UnknownModel, VariablePrice
from infra.storage import atomic_write_json

log = logging.getLogger("ar.pricing")

TTL_SECONDS = 24 * 3600
RETRY_SECONDS = 300  # after a failed refresh, the stale prices serve this long before trying again
# Two figures of one call's cost (the provider's and ours, or the ledger's and the provider's
# record) may differ by float rounding; more than this is a real difference.
COST_TOLERANCE_USD = 1e-9
# With the user's own provider key (BYOK), OpenRouter's fee comes on top of the provider's
# bill (5% in its FAQ); a worst case, which cannot know whether the call is BYOK, allows for it.
BYOK_FEE_BOUND = 1.05


def same_cost(a: float, b: float) -> bool:
    return abs(a - b) <= COST_TOLERANCE_USD + 1e-6 * max(abs(a), abs(b))


def _usd(value) -> float | None:
    """Prices come as strings of USD per unit ("0.0000003"); absent stays None."""
    if value is None or value == "":
        return None
    return float(value)


class Rates(BaseModel):
    """USD per token (prompt, completion, cache, reasoning), per image, per request, per search."""

    prompt: float | None  # None: not known in advance (see ModelPrice.variable)
    completion: float | None
    request: float = 0.0
    image: float = 0.0
    web_search: float = 0.0
    input_cache_read: float | None = None
    input_cache_write: float | None = None
    internal_reasoning: float | None = None
    discount: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _variable(cls, values):
        """A negative price ("-1" at OpenRouter) means a variable price: no rate is known in
        advance. Here, so that a price list cached by an older ar is read the same way."""
        if isinstance(values, dict) and any(isinstance(v, (int, float)) and v < 0 for v in values.values()):
            values = {k: v for k, v in values.items() if not (isinstance(v, (int, float)) and v < 0)}
            values.update(prompt=None, completion=None)
        return values

    @property
    def cache_read_rate(self) -> float:
        """A cached prompt token: at the cache read price, or the prompt price if none."""
        return self.prompt if self.input_cache_read is None else self.input_cache_read

    @classmethod
    def from_max_price(cls, max_price: dict[str, float] | None) -> Rates | None:
        """The ceiling a request's provider.max_price (USD per million tokens) enforces."""
        if max_price is None:
            return None
        return cls(prompt=max_price["prompt"] / 1e6, completion=max_price["completion"] / 1e6)


class PriceOverride(BaseModel):
    """Prices that replace the model's own for a request past a size (OpenRouter's
    `pricing.overrides`: long-context prices from `min_prompt_tokens` on)."""

    min_prompt_tokens: int = 0
    prices: dict[str, float]
    conditions_known: bool = True  # False: it has a condition ar cannot check (see dearest)


class ModelPrice(Rates):
    overrides: list[PriceOverride] = []

    @property
    def variable(self) -> bool:
        """A router such as openrouter/auto: OpenRouter gives "-1", the price of whichever
        model answers is known only from the bill."""
        return self.prompt is None or self.completion is None

    def at(self, prompt_tokens: int) -> Rates:
        """The rates that apply to a request of `prompt_tokens` prompt tokens."""
        update: dict[str, float] = {}
        for o in sorted(self.overrides, key=lambda o: o.min_prompt_tokens):
            if o.conditions_known and prompt_tokens >= o.min_prompt_tokens:
                update.update(o.prices)
        return Rates(**{**self.model_dump(exclude={"overrides"}), **update})

    def dearest(self) -> Rates:
        """Each rate at its highest over the model's own and every override: what a worst
        case may count on, whatever the request's size (or a condition ar cannot check)."""
        rates = self.model_dump(exclude={"overrides"})
        for o in self.overrides:
            for k, v in o.prices.items():
                rates[k] = v if rates.get(k) is None else max(rates[k], v)
        return Rates(**rates)

    @classmethod
    def from_openrouter(cls, pricing: dict) -> ModelPrice:
        """A price list entry (a negative price: a variable price, see Rates._variable)."""
        values = {k: _usd(v) for k, v in pricing.items() if k in Rates.model_fields}
        overrides = [_override(o) for o in pricing.get("overrides") or ()]
        return cls(**{k: v for k, v in values.items() if v is not None},
                   overrides=[o for o in overrides if o is not None])


def _override(entry: dict) -> PriceOverride | None:
    prices = {k: _usd(v) for k, v in entry.items() if k in Rates.model_fields}
    prices = {k: v for k, v in prices.items() if v is not None and v >= 0}
    if not prices:
        return None
    conditions = set(entry) - set(Rates.model_fields) - {"min_prompt_tokens"}
    # a price name ar does not know (input_cache_write_1h) is a price, not a condition
    unknown = {c for c in conditions if not c.startswith(("input_", "output_"))}
    return PriceOverride(min_prompt_tokens=int(entry.get("min_prompt_tokens") or 0), prices=prices,
                         conditions_known=not unknown)


def _upstream_cost(is_byok, upstream) -> float | None:
    """The provider's own bill, counted only for BYOK: OpenRouter fills the field on other
    calls too, equal to `cost`, which already is the bill there."""
    return float(upstream) if is_byok and upstream is not None else None


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
    # With the user's own provider key (BYOK), `cost` is OpenRouter's fee and the provider
    # bills the inference itself: the user pays both. None when not BYOK.
    upstream_cost: float | None = None

    @classmethod
    def from_openrouter(cls, usage: dict, images: int = 0) -> Usage:
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        cost = usage.get("cost")
        return cls(
            upstream_cost=_upstream_cost(usage.get("is_byok"), (usage.get("cost_details") or {}).get(
                "upstream_inference_cost")),
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            cached_tokens=prompt_details.get("cached_tokens") or 0,
            cache_write_tokens=prompt_details.get("cache_write_tokens") or 0,
            reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
            images=images,
            cost=float(cost) if cost is not None else None,
        )

    @classmethod
    def from_generation(cls, data: dict) -> Usage:
        """The provider's record of a generation (`GET /generation`'s `data`)."""
        cost = data.get("total_cost")
        return cls(
            prompt_tokens=data.get("native_tokens_prompt") or data.get("tokens_prompt") or 0,
            completion_tokens=data.get("native_tokens_completion") or data.get("tokens_completion") or 0,
            cached_tokens=data.get("native_tokens_cached") or 0,
            reasoning_tokens=data.get("native_tokens_reasoning") or 0,
            cost=float(cost) if cost is not None else None,
            upstream_cost=_upstream_cost(data.get("is_byok"), data.get("upstream_inference_cost")),
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

    def cost(self, model: str, usage: Usage) -> float | None:
        """None for a variable-price model: only the provider's bill says."""
        price = self.pricing.get(model)
        if price.variable:
            return None
        p = price.at(usage.prompt_tokens)
        cache_write = p.prompt if p.input_cache_write is None else p.input_cache_write
        reasoning = p.internal_reasoning if p.internal_reasoning else p.completion
        plain_prompt = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
        plain_completion = usage.completion_tokens - usage.reasoning_tokens
        total = (plain_prompt * p.prompt + usage.cached_tokens * p.cache_read_rate
                 + usage.cache_write_tokens * cache_write + plain_completion * p.completion
                 + usage.reasoning_tokens * reasoning + usage.images * p.image
                 + usage.web_searches * p.web_search + p.request)
        return total * (1 - p.discount)

    def worst_case(self, model: str, prompt_tokens: int, max_tokens: int, images: int = 0,
                   ceiling: Rates | None = None) -> float:
        """The most a call can cost: every prompt token uncached, max_tokens at the dearest
        completion rate. Budgets reserve this before a call is sent. A variable-price model
        has a worst case only under a `ceiling` the request itself enforces (max_price)."""
        price = self.pricing.get(model)
        if price.variable and ceiling is None:
            raise VariablePrice(f"{model} has a variable price (the provider gives none in advance): "
                                "a budget cannot be held; choose a fixed-price model, or set "
                                "AR_MAX_PROMPT_PRICE and AR_MAX_COMPLETION_PRICE so that each request "
                                "carries a ceiling (provider.max_price)")
        if price.variable and images:
            raise VariablePrice(f"{model} has a variable price and max_price sets no ceiling on images: "
                                "a budget cannot be held with --vision; choose a fixed-price model")
        p = ceiling if price.variable else price.dearest()
        out_rate = max(p.completion, p.internal_reasoning or 0.0)
        cache_write = max(p.prompt, p.input_cache_write or 0.0)
        total = prompt_tokens * cache_write + max_tokens * out_rate + images * p.image + p.request
        return total * (1 - p.discount) * BYOK_FEE_BOUND
