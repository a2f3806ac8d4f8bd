"""LLMClient: one chat call to OpenRouter (or any OpenAI-compatible endpoint) = (response, usage, cost).

Every attempt goes through a CallRecorder, in the order that keeps the ledger equal to the
bill (docs/architecture.md, invariants 1 and 2): recorded as pending before it is sent; its generation
id recorded the moment the first streamed chunk brings it; its cost the moment its usage
arrives, before anything else is done with the answer. Failed attempts are billed too, so
they are recorded too. The client computes costs; it does not accumulate them.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from infra.budget import Budget
from infra.config import Settings
from infra.errors import FatalLLMError, InvalidAnswer, LLMError, RetryableError
from infra.logs import log_event, register_secret
from infra.pricing import CostCalculator, PricingCache, Rates, Usage, same_cost
from infra.transport import SlotTransport

log = logging.getLogger("ar.llm")

Answer = TypeVar("Answer", bound=BaseModel)

# No tokenizer splits text finer than a byte, and no provider counts an image as more than
# this many prompt tokens: bounds for the worst case a budget reserves.
IMAGE_TOKENS_BOUND = 2000


class CallRecorder(Protocol):
    """Where each attempt is reported (a stage gives one per page; see pipeline/llm_stage.py)."""

    def begin(self, model: str, attempt: int) -> int: ...
    def generation(self, handle: int, generation_id: str) -> None: ...
    def finish(self, handle: int, status: str, usage: Usage | None, computed: float | None,
               provider: float | None, error: str | None, generation_id: str | None) -> float: ...
    def unresolved(self, handle: int) -> None:
        """The attempt's cost will not be known in this run (it stays pending for the next)."""


@dataclass(frozen=True)
class Result:
    response: BaseModel | str
    usage: Usage
    cost: float  # of every attempt this call took, failed ones included


def image_part(path: Path) -> dict:
    """A page scan as a base64 data URL, for vision models."""
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def _provider_message(response: httpx.Response, body: bytes) -> str:
    try:
        err = json.loads(body).get("error") or {}
        message = err.get("message") or body.decode(errors="replace")[:200]
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")[:200] or response.reason_phrase
    return f"HTTP {response.status_code}: {message}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class _Pacer:
    """At most `per_minute` request starts a minute (0: no limit of our own)."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            if self.next_start > now:
                await asyncio.sleep(self.next_start - now)
            self.next_start = max(now, self.next_start) + self.interval


class LLMClient:
    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        pricing: PricingCache,
        *,
        timeout: float = 120.0,
        max_retries: int = 6,
        max_invalid_answers: int = 2,
        concurrency: int = 32,
        requests_per_minute: float = 0,
        backoff_cap: float = 30.0,
        resolve_timeout: float = 60.0,
    ):
        if api_key is None or not api_key.get_secret_value().strip():
            raise FatalLLMError("no API key: set OPENROUTER_API_KEY in the environment or in .env")
        register_secret(api_key.get_secret_value())
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.pricing = pricing
        self.costs = CostCalculator(pricing)
        self.max_retries = max_retries
        self.max_invalid_answers = max_invalid_answers
        self.backoff_cap = backoff_cap
        self.resolve_timeout = resolve_timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._pacer = _Pacer(requests_per_minute)
        self._late: set[asyncio.Task] = set()
        self.budget: Budget | None = None  # set by the run when the book has a cap
        self.ceiling: Rates | None = None  # the prices no request may pass (provider.max_price)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            transport=SlotTransport(concurrency),
        )

    @classmethod
    def from_settings(cls, settings: Settings, concurrency: int) -> LLMClient:
        return cls(settings.base_url, settings.api_key, PricingCache(settings.base_url),
                   timeout=settings.timeout_s, max_retries=settings.max_retries,
                   concurrency=concurrency, requests_per_minute=settings.requests_per_minute)

    def __repr__(self) -> str:
        return f"LLMClient({self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key.get_secret_value()}", "X-Title": "ar"}

    async def drain(self) -> None:
        """Until the calls cut mid-answer are settled from the provider's record (or given up)."""
        if self._late:
            await asyncio.gather(*self._late, return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await self._http.aclose()

    # ---- the call ------------------------------------------------------------------

    async def call(
        self,
        model: str,
        messages: list[dict],
        recorder: CallRecorder,
        schema: type[Answer] | None = None,
        max_tokens: int = 4096,
    ) -> Result:
        """Send one chat request; retry what is worth retrying; validate against `schema`."""
        self.pricing.get(model)  # an unpriced model is an error before any call, never $0
        body: dict = {"model": model, "messages": list(messages), "max_tokens": max_tokens,
                      "stream": True, "usage": {"include": True},
                      "stream_options": {"include_usage": True}}
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema.__name__, "strict": True, "schema": _json_schema(schema)}}
        spent, attempt, invalid = 0.0, 0, 0
        while True:
            text, usage, cost, attempt = await self._with_retries(body, recorder, attempt)
            spent += cost
            if schema is None:
                return Result(text, usage, spent)
            try:
                return Result(schema.model_validate_json(_strip_fences(text)), usage, spent)
            except ValidationError as e:
                problem = _first_error(e)
                log_event(log, "invalid answer", logging.WARNING, model=model, error=problem)
                invalid += 1
                if invalid > self.max_invalid_answers:
                    raise InvalidAnswer(f"{model}: answer did not match the schema "
                                        f"after {invalid} tries: {problem}") from None
                body["messages"] = list(messages) + [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That answer is not valid: {problem}. "
                                                "Answer again with only the JSON object the schema asks for."},
                ]

    async def _with_retries(self, body, recorder, attempt: int):
        """One answer, retrying what is worth retrying; attempts are numbered on from `attempt`."""
        numbers = itertools.count(attempt + 1)

        async def once():
            number = next(numbers)
            return (*await self._attempt(body, recorder, number), number)

        retrying = AsyncRetrying(retry=retry_if_exception_type(RetryableError),
                                 stop=stop_after_attempt(self.max_retries + 1), wait=self._wait, reraise=True)
        return await retrying(once)

    def _wait(self, state) -> float:
        """Retry-After when the provider gives one, else exponential backoff with full jitter."""
        error = state.outcome.exception()
        if isinstance(error, RetryableError) and error.retry_after is not None:
            return min(error.retry_after, self.backoff_cap)
        return random.uniform(0, min(self.backoff_cap, 0.25 * 2 ** state.attempt_number))

    async def _attempt(self, body: dict, recorder: CallRecorder, attempt: int) -> tuple[str, Usage, float]:
        model = body["model"]
        async with self._slots:
            await self._pacer.wait()
            if self.budget is not None:  # BudgetReached here: the call is not sent
                recorder = _Reserved(recorder, self.budget, await self.budget.reserve(self.worst_case(body)))
            handle = recorder.begin(model, attempt)  # pending before a byte is sent
            generation_id: str | None = None
            parts: list[str] = []
            answer = None  # (text, usage, cost) once the usage has arrived and its cost is recorded
            try:
                async with self._http.stream("POST", f"{self.base_url}/chat/completions",
                                             json=body, headers=self._headers()) as response:
                    if response.status_code != 200:
                        self._fail_http(response, await response.aread(), recorder, handle)
                    # Read to the end, past [DONE]: a response left unread closes its connection,
                    # and every call would pay for a new one (a TLS handshake, with a real provider).
                    async for line in response.aiter_lines():
                        if answer is not None or not line.startswith("data:"):
                            continue  # SSE comments (": OPENROUTER PROCESSING"), blank lines, the end
                        data = line[5:].strip()
                        if data == "[DONE]":
                            continue
                        chunk = json.loads(data)
                        if generation_id is None and chunk.get("id"):
                            generation_id = chunk["id"]
                            recorder.generation(handle, generation_id)
                        for choice in chunk.get("choices") or ():
                            parts.append((choice.get("delta") or {}).get("content") or "")
                        if chunk.get("usage"):
                            usage = Usage.from_openrouter(chunk["usage"], images=_images(body))
                            answer = self._settle(model, usage, chunk, parts, recorder, handle, generation_id)
                        elif chunk.get("error"):
                            # an error without usage: the provider's record says what it billed
                            raise self._cut(recorder, handle, generation_id,
                                            f"error during generation: {chunk['error'].get('message')}")
                if answer is not None:
                    return answer
                raise self._cut(recorder, handle, generation_id, "stream ended without usage")
            except (httpx.TimeoutException, httpx.TransportError) as e:
                if answer is not None:  # cut after the answer was whole and recorded: it stands
                    return answer
                raise self._cut(recorder, handle, generation_id, f"{type(e).__name__}: {e}".rstrip(": ")) from None
            except json.JSONDecodeError as e:
                raise self._cut(recorder, handle, generation_id, f"malformed stream chunk: {e}") from None
            except asyncio.CancelledError:
                if answer is None:
                    self._cut(recorder, handle, generation_id, "cancelled")
                raise

    def worst_case(self, body: dict) -> float:
        """The most this request can cost (see infra/budget.py)."""
        images = _images(body)
        text_bytes = sum(len(_text_of(m).encode()) + 8 for m in body["messages"])
        return self.costs.worst_case(body["model"], text_bytes + images * IMAGE_TOKENS_BOUND,
                                     body["max_tokens"], images, ceiling=self.ceiling)

    def _settle(self, model, usage, chunk, parts, recorder, handle, generation_id):
        """The usage has arrived: record its cost first, then look at the answer."""
        computed = self.costs.cost(model, usage)
        provider = usage.cost
        error = chunk.get("error")
        status = "failed" if error else "ok"
        message = f"error during generation: {error.get('message')}" if error else None
        recorded = recorder.finish(handle, status, usage, computed, provider, message, generation_id)
        if provider is not None and not same_cost(provider, computed):
            log_event(log, "provider cost differs from computed cost", logging.WARNING, model=model,
                      generation_id=generation_id, provider_cost=provider, computed_cost=computed)
        if error:  # HTTP 200 with an error body: billed, failed, worth another try
            raise RetryableError(f"{model}: {message}")
        return "".join(parts), usage, recorded

    def _fail_http(self, response: httpx.Response, body: bytes, recorder, handle) -> None:
        """A non-200 answer: nothing was generated, so nothing was billed."""
        message = _provider_message(response, body)
        recorder.finish(handle, "failed", None, 0.0, None, message, None)
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise RetryableError(message, _retry_after(response))
        if status == 402:
            raise FatalLLMError(f"out of credits at {self.base_url} ({message}): add credits, then run again")
        if status in (401, 403):
            raise FatalLLMError(f"the provider refused the API key ({message}): check OPENROUTER_API_KEY")
        raise LLMError(message)

    def _cut(self, recorder, handle, generation_id, message) -> RetryableError:
        """The attempt ended before its usage arrived. Without an id nothing was generated,
        so nothing billed; with one, the provider may have billed a part: ask it (later)."""
        if generation_id is None:
            recorder.finish(handle, "failed", None, 0.0, None, message, None)
        else:
            task = asyncio.get_running_loop().create_task(
                self._settle_from_provider(recorder, handle, generation_id, message))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        return RetryableError(message)

    async def _settle_from_provider(self, recorder, handle, generation_id, message) -> None:
        stats = await self.generation_stats(generation_id)
        if stats is None:
            recorder.unresolved(handle)
            return
        usage, cost = stats
        recorder.finish(handle, "failed", usage, None, cost, message, generation_id)

    # ---- after a crash ---------------------------------------------------------------

    async def generation_stats(self, generation_id: str) -> tuple[Usage, float] | None:
        """What the provider billed for a generation; None if it still does not know it.

        Stats appear a moment after a generation ends: 404 means "not yet", so ask again.
        """
        deadline = time.monotonic() + self.resolve_timeout
        delay = 0.1
        while True:
            try:
                r = await self._http.get(f"{self.base_url}/generation", params={"id": generation_id},
                                         headers=self._headers())
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code == 200:
                usage = Usage.from_generation(r.json()["data"])
                return usage, usage.cost or 0.0
            if r is not None and r.status_code in (401, 403):
                raise FatalLLMError(f"the provider refused the API key ({_provider_message(r, r.content)})")
            if time.monotonic() + delay > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def key_usage(self) -> float | None:
        """What the key has been charged so far, in USD (`GET /key`: its usage, and the spend on
        the user's own provider keys, BYOK); None where the endpoint has no such counter."""
        try:
            r = await self._http.get(f"{self.base_url}/key", headers=self._headers())
            data = r.json()["data"] if r.status_code == 200 else None
            return None if data is None else float(data["usage"]) + float(data.get("byok_usage") or 0)
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def resolve_pending(self, pending, recorder_for) -> dict[str, int]:
        """Close the calls an earlier run left pending, each as the provider billed it."""
        counts = {"recovered": 0, "lost": 0, "unresolved": 0}

        async def one(call) -> None:
            recorder = recorder_for(call)
            if call.generation_id is None:  # cut before the provider sent anything: not billed
                recorder.finish(call.call_id, "lost", None, 0.0, None, "never answered (run ended)", None)
                counts["lost"] += 1
                return
            stats = await self.generation_stats(call.generation_id)
            if stats is None:
                counts["unresolved"] += 1
                log_event(log, "generation not yet known to the provider; left pending", logging.WARNING,
                          call_id=call.call_id, generation_id=call.generation_id)
                return
            usage, cost = stats
            computed = self.costs.cost(call.model, usage) if usage.prompt_tokens else None
            recorder.finish(call.call_id, "recovered", usage, computed, cost,
                            "run ended mid-call; cost from the provider", call.generation_id)
            counts["recovered"] += 1

        await asyncio.gather(*(one(c) for c in pending))
        return counts


class _Reserved:
    """A recorder whose call holds a budget reservation until its cost is recorded."""

    def __init__(self, inner: CallRecorder, budget: Budget, reservation: float):
        self.inner, self.budget, self.reservation = inner, budget, reservation

    def begin(self, model: str, attempt: int) -> int:
        return self.inner.begin(model, attempt)

    def generation(self, handle: int, generation_id: str) -> None:
        self.inner.generation(handle, generation_id)

    def finish(self, handle, status, usage, computed, provider, error, generation_id) -> float:
        cost = self.inner.finish(handle, status, usage, computed, provider, error, generation_id)
        self.budget.settle(self.reservation, cost)
        return cost

    def unresolved(self, handle: int) -> None:
        """Unknown cost: count the worst case as spent, so the budget still holds."""
        self.inner.unresolved(handle)
        self.budget.settle(self.reservation, self.reservation)


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or () if part.get("type") == "text")


def _images(body: dict) -> int:
    return sum(1 for m in body["messages"] if isinstance(m.get("content"), list)
               for part in m["content"] if part.get("type") == "image_url")


@functools.cache
def _json_schema(schema: type[BaseModel]) -> dict:
    """Built once per model class: pydantic takes about a millisecond to build it."""
    return schema.model_json_schema()


def _strip_fences(text: str) -> str:
    """Some models wrap JSON in ``` fences even when asked for JSON only."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rsplit("```", 1)[0]
    return t


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]

