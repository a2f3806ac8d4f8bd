"""LLMClient: one chat call to OpenRouter (or any OpenAI-compatible endpoint) = (response, usage, cost).

Every attempt goes through a CallRecorder, in the order that keeps the ledger equal to the
bill (docs/architecture.md, invariants 1 and 2): recorded as pending before it is sent; its
generation id recorded the moment it is known (the `X-Generation-Id` response header, before
any chunk, else the `id` of the first data chunk); its cost the moment its usage arrives,
before anything else is done with the answer. Failed attempts are billed too, so they are
recorded too. The client computes costs; it does not accumulate them.

What a real OpenRouter stream can say, and what the client does (tests/test_openrouter_payloads.py
pins each on recorded bytes, tests/fixtures/openrouter/):
- cut after the headers, before any data chunk (OpenRouter sends `: OPENROUTER PROCESSING`
  comments while the provider thinks): with the header's id the attempt is settled from
  `GET /generation` (the provider may go on generating, and bill); without an id it is $0;
- an error chunk (a top-level `error`, or a choice with `finish_reason: "error"`): a failed
  attempt, billed as its usage says (or as `/generation` says when no usage came), retried;
- `finish_reason: "length"`: the same request is never sent again; it is asked once more
  with twice the room (up to MAX_TOKENS_CAP, the budget reserving the larger worst case),
  and a second cut is TruncatedAnswer, which flags the page;
- an error body: its reason is the provider's own (`error.metadata.raw`), named with the
  provider, on one line (`HTTP 400 from OpenAI: ...`).

The request: `temperature: 0`; `reasoning: {"effort": "low", "exclude": true}` so reasoning
takes about a fifth of max_tokens and never the whole answer; with a schema, a strict one
(`strict_schema`) and `provider.require_parameters`, so no provider that would ignore the
schema is chosen; `provider.max_price` when the client has one. A model whose providers do not
take `temperature` or `reasoning` answers 404 under require_parameters ("No endpoints found that
can handle the requested parameters"): those two are then dropped for that model, and the
request sent again (a 404 is not billed).
"""
from __future__ import annotations

import asyncio
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
import orjson
from pydantic import BaseModel, SecretStr, ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from infra.budget import Budget, LedgerBudget, admit
from infra.config import Settings
from infra.errors import FatalLLMError, InvalidAnswer, LLMError, PricingError, RetryableError, TruncatedAnswer
from infra.images import data_url, image_tokens_bound
from infra.logs import log_event, redact, register_secret
from infra.pricing import CostCalculator, PricingCache, Rates, Usage, same_cost
from infra.transport import SlotTransport

log = logging.getLogger("ar.llm")

Answer = TypeVar("Answer", bound=BaseModel)

# A generation the provider still does not know this long after it started never will.
GENERATION_KNOWN_WITHIN_S = 24 * 3600
# The key's check before a run: a provider slower than this is left for the first call to judge.
KEY_CHECK_TIMEOUT_S = 10.0
# An answer cut at max_tokens is asked once more with twice the room, never more than this.
MAX_TOKENS_CAP = 32768
# Reasoning at low effort: about 20% of max_tokens on every provider (OpenRouter turns the
# effort into a token budget for models that take one), so it cannot eat the answer; the
# reasoning text itself is not sent back (it is billed either way, and ar does not read it).
REASONING = {"effort": "low", "exclude": True}
# Parameters some models' providers do not take: under require_parameters a request carrying
# one matches no endpoint (404), so they are dropped for such a model.
OPTIONAL_PARAMETERS = ("temperature", "reasoning")
# The provider's reason in an error message: one line, at most this long.
REASON_CHARS = 300


class CallRecorder(Protocol):
    """Where each attempt is reported (a stage gives one per page; see pipeline/llm_stage.py)."""

    page: int | None  # the page the call is for, named in warnings (None: not a page's call)

    def begin(self, model: str, attempt: int, reserve_usd: float = 0.0) -> int:
        """Record the attempt pending; with `reserve_usd`, the fleet's ledger reserves it too
        (infra.budget.LedgerBudget)."""
    def generation(self, handle: int, generation_id: str) -> None: ...
    def finish(self, handle: int, status: str, usage: Usage | None, computed: float | None,
               provider: float | None, error: str | None, generation_id: str | None) -> float: ...
    def unresolved(self, handle: int) -> None:
        """The attempt's cost will not be known in this run (it stays pending for the next)."""
    def rejected(self, handle: int, reason: str) -> None:
        """The attempt, its cost recorded, answered what the schema does not take: it failed."""


@dataclass(frozen=True)
class Result:
    response: BaseModel | str
    usage: Usage
    cost: float  # of every attempt this call took, failed ones included


def image_part(path: Path) -> dict:
    """A page scan as a vision model takes it (infra/images.py), in a base64 data URL."""
    return {"type": "image_url", "image_url": {"url": data_url(path)}}


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"


def _raw_reason(raw) -> str | None:
    """The provider's own message in `metadata.raw`: a JSON error object (as a string or
    not: OpenAI's `{"error": {"message": ...}}`, a list of them from Google), or plain text."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return raw.strip() or None
    if isinstance(raw, list) and raw:
        raw = raw[0]
    if isinstance(raw, dict):
        inner = raw.get("error", raw)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return json.dumps(raw) if raw not in (None, "", [], {}) else None


def error_reason(error, provider: str | None = None) -> tuple[str | None, str]:
    """(the provider's name, its reason) from OpenRouter's `error` object. "Provider returned
    error" says nothing: the reason is then `metadata.raw`, the provider's own words."""
    if not isinstance(error, dict):
        return provider, _one_line(str(error))
    metadata = error.get("metadata") if isinstance(error.get("metadata"), dict) else {}
    provider = metadata.get("provider_name") or provider
    reason = _raw_reason(metadata.get("raw")) if metadata.get("raw") else None
    message = error.get("message")
    if reason is None:
        reason = message if message else json.dumps(error)
    elif message and message != "Provider returned error" and message not in reason:
        reason = f"{message}: {reason}"
    return provider, redact(_one_line(reason))


def _error_object(body: bytes):
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("error") if isinstance(data, dict) else None


def _provider_message(response: httpx.Response, body: bytes) -> str:
    """`HTTP 400 from OpenAI: <the provider's reason>` (or `HTTP 401: <OpenRouter's>`)."""
    error = _error_object(body)
    if error is None:
        provider, reason = None, redact(_one_line(body.decode(errors="replace"))) or response.reason_phrase
    else:
        provider, reason = error_reason(error)
    source = f" from {provider}" if provider else ""
    return f"HTTP {response.status_code}{source}: {reason}"


def _seconds(value) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _retry_after(response: httpx.Response, body: bytes = b"") -> float | None:
    """The Retry-After header; else what the body says: `metadata.retry_after_seconds`, the
    upstream's `Retry-After` kept in `metadata.headers`, or `availability.retry_after`."""
    seconds = _seconds(response.headers.get("retry-after"))
    error = _error_object(body) if seconds is None else None
    if isinstance(error, dict):
        metadata = error.get("metadata") if isinstance(error.get("metadata"), dict) else {}
        headers = metadata.get("headers") if isinstance(metadata.get("headers"), dict) else {}
        availability = error.get("availability") if isinstance(error.get("availability"), dict) else {}
        for value in (metadata.get("retry_after_seconds"),
                      *(v for k, v in headers.items() if k.lower() == "retry-after"),
                      availability.get("retry_after")):
            seconds = _seconds(value)
            if seconds is not None:
                break
    return seconds


def _stream_error(error, chunk: dict) -> str:
    """What an error chunk says, with the provider's name: `error during generation from X: ...`."""
    provider, reason = error_reason(error, chunk.get("provider"))
    source = f" from {provider}" if provider else ""
    return f"error during generation{source}: {reason}"


class _NoEndpoint(LLMError):
    """404: no provider of the model takes every parameter sent (require_parameters)."""

    attempt = 0


async def _sse_data(response: httpx.Response):
    """The payload of each `data:` line of a server-sent event stream, as bytes. SSE comments
    (": OPENROUTER PROCESSING") and blank lines are passed over. Split here, on bytes: a
    streamed page is hundreds of small chunks, and httpx's text and line decoders cost more
    per chunk than the call's own work."""
    pending = b""
    async for block in response.aiter_bytes():
        lines = (pending + block).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if pending.startswith(b"data:"):
        yield pending[5:].strip()


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


def require_key(api_key: SecretStr | None) -> None:
    """No call can go without a key: said before any is tried."""
    if api_key is None or not api_key.get_secret_value().strip():
        raise FatalLLMError("no API key: set OPENROUTER_API_KEY in the environment or in .env")


def check_key(base_url: str, api_key: SecretStr | None) -> None:
    """Before any run opens: a key the provider refuses (`GET /key` answers 401 or 403) stops
    here, and not at the first call, when the run is already on record. An endpoint without
    /key, or out of reach now, is left for the first call to judge."""
    require_key(api_key)
    try:
        r = httpx.get(f"{base_url}/key", headers=_auth_headers(api_key), timeout=KEY_CHECK_TIMEOUT_S)
    except httpx.HTTPError:
        return
    if r.status_code in (401, 403):
        raise FatalLLMError(f"the provider refused the API key ({_provider_message(r, r.content)})")


def _auth_headers(api_key: SecretStr) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key.get_secret_value()}", "X-Title": "ar"}


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
        max_price: dict | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        """`max_price`: OpenRouter's `provider.max_price` (USD per million tokens, e.g.
        {"prompt": 1, "completion": 2}), sent with every request when given. `transport`: for
        tests (httpx.MockTransport); by default one keep-alive connection per call slot."""
        require_key(api_key)
        register_secret(api_key.get_secret_value())
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.pricing = pricing
        self.costs = CostCalculator(pricing)
        self.max_retries = max_retries
        self.max_invalid_answers = max_invalid_answers
        self.backoff_cap = backoff_cap
        self.resolve_timeout = resolve_timeout
        self.max_price = dict(max_price) if max_price else None
        self._without_optional: set[str] = set()  # models whose providers reject OPTIONAL_PARAMETERS
        self._slots = asyncio.Semaphore(concurrency)
        self._pacer = _Pacer(requests_per_minute)
        self._late: set[asyncio.Task] = set()
        self.budget: Budget | LedgerBudget | None = None  # set by the run (a cap, or a fleet's ledger)
        self.ceiling = Rates.from_max_price(self.max_price)  # what no request may pass: its worst case
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            transport=transport if transport is not None else SlotTransport(concurrency),
        )

    @classmethod
    def from_settings(cls, settings: Settings, concurrency: int) -> LLMClient:
        return cls(settings.base_url, settings.api_key, PricingCache(settings.base_url),
                   timeout=settings.timeout_s, max_retries=settings.max_retries,
                   concurrency=concurrency, requests_per_minute=settings.requests_per_minute,
                   max_price=settings.max_price)

    def __repr__(self) -> str:
        return f"LLMClient({self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        return _auth_headers(self._key)

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
        body = self.request_body(model, messages, schema, max_tokens)
        spent, attempt, invalid, widened = 0.0, 0, 0, False
        while True:
            try:
                text, usage, cost, finish, handle, attempt = await self._with_retries(body, recorder, attempt)
            except _NoEndpoint as e:
                attempt = e.attempt
                if not any(k in body for k in OPTIONAL_PARAMETERS):
                    raise LLMError(str(e)) from None
                log_event(log, "no provider takes temperature/reasoning with require_parameters; "
                          "sending without them", logging.WARNING, model=model, error=str(e))
                self._without_optional.add(model)
                for key in OPTIONAL_PARAMETERS:
                    body.pop(key, None)
                continue
            spent += cost
            if finish == "length":  # never the same request again: once more with more room, or flag
                if widened or body["max_tokens"] >= MAX_TOKENS_CAP:
                    raise TruncatedAnswer(f"{model}: the answer was cut at max_tokens={body['max_tokens']} "
                                          "(finish_reason length) even with more room")
                widened = True
                body["max_tokens"] = min(MAX_TOKENS_CAP, 2 * body["max_tokens"])
                log_event(log, f"{_page_of(recorder)}the answer of {model} was cut at max_tokens; asking once "
                          "more with more room", logging.WARNING, model=model, max_tokens=body["max_tokens"],
                          page=recorder.page)
                continue
            if schema is None:
                return Result(text, usage, spent)
            try:
                return Result(schema.model_validate_json(_strip_fences(text)), usage, spent)
            except ValidationError as e:
                problem = _first_error(e)
                recorder.rejected(handle, f"invalid answer: {problem}")  # billed, and failed
                log_event(log, f"{_page_of(recorder)}invalid answer from {model}: {problem}", logging.WARNING,
                          event="invalid_answer", stage=getattr(recorder, "stage", None), model=model,
                          error=problem, page=recorder.page)
                invalid += 1
                if invalid > self.max_invalid_answers:
                    raise InvalidAnswer(f"{model}: answer did not match the schema "
                                        f"after {invalid} tries: {problem}") from None
                body["messages"] = list(messages) + [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That answer is not valid: {problem}. "
                                                "Answer again with only the JSON object the schema asks for."},
                ]

    def request_body(self, model: str, messages: list[dict], schema: type[BaseModel] | None = None,
                     max_tokens: int = 4096) -> dict:
        """What is sent (see the module's docstring)."""
        body: dict = {"model": model, "messages": list(messages), "max_tokens": max_tokens,
                      "stream": True, "stream_options": {"include_usage": True}}
        if model not in self._without_optional:
            body["temperature"] = 0
            body["reasoning"] = dict(REASONING)
        provider: dict = {}
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema.__name__, "strict": True, "schema": strict_schema(schema)}}
            provider["require_parameters"] = True
        if self.max_price:
            provider["max_price"] = dict(self.max_price)
        if provider:
            body["provider"] = provider
        return body

    async def _with_retries(self, body, recorder, attempt: int):
        """One answer, retrying what is worth retrying; attempts are numbered on from `attempt`.
        Each attempt goes in the run's log, with the wait before the next one."""
        numbers, tries = itertools.count(attempt + 1), itertools.count(1)

        async def once():
            number, tried = next(numbers), next(tries)
            traced, started, error = _Traced(recorder), time.monotonic(), None
            try:
                return (*await self._attempt(body, traced, number), number)
            except BaseException as e:
                error = e
                if isinstance(e, _NoEndpoint):
                    e.attempt = number
                if isinstance(e, RetryableError):
                    wait = self._backoff(e, tried)
                    if tried <= self.max_retries:
                        e.wait = wait
                    if traced.http_status == 429 and isinstance(self.budget, LedgerBudget):
                        self.budget.pause(recorder, wait)  # the whole fleet waits, not only this call
                raise
            finally:
                _log_attempt(body["model"], recorder, number, traced, error, time.monotonic() - started)

        retrying = AsyncRetrying(retry=retry_if_exception_type(RetryableError),
                                 stop=stop_after_attempt(self.max_retries + 1),
                                 wait=lambda state: getattr(state.outcome.exception(), "wait", None) or 0.0,
                                 reraise=True)
        return await retrying(once)

    def _backoff(self, error: RetryableError, tried: int) -> float:
        """Retry-After when the provider gives one, else exponential backoff with full jitter."""
        if error.retry_after is not None:
            return min(error.retry_after, self.backoff_cap)
        return random.uniform(0, min(self.backoff_cap, 0.25 * 2 ** tried))

    async def _attempt(self, body: dict, recorder: _Traced, attempt: int) -> tuple[str, Usage, float, str | None, int]:
        """One request: (text, usage, cost, finish_reason, its handle), its cost recorded."""
        model, traced = body["model"], recorder
        async with self._slots:
            if not isinstance(self.budget, LedgerBudget):  # the fleet's ledger paces its admissions itself
                await self._pacer.wait()
            # reserved against every cap, then pending; BudgetReached here: the call is not sent
            recorder, handle = await admit(recorder, self.budget, model, attempt, self.worst_case(body))
            generation_id: str | None = None
            parts: list[str] = []
            # what the stream said about its end: an error (top-level, or a choice's), the finish reason
            ending: dict = {"error": None, "finish_reason": None}
            answer = None  # (text, usage, cost) once the usage has arrived and its cost is recorded
            try:
                async with self._http.stream("POST", f"{self.base_url}/chat/completions",
                                             json=body, headers=self._headers()) as response:
                    traced.http_status = response.status_code
                    if response.status_code != 200:
                        self._fail_http(response, await response.aread(), recorder, handle)
                    # The id may come before any chunk: a cut from here on is asked about, not $0.
                    generation_id = response.headers.get("x-generation-id") or None
                    if generation_id is not None:
                        recorder.generation(handle, generation_id)
                    # Read to the end, past [DONE]: a response left unread closes its connection,
                    # and every call would pay for a new one (a TLS handshake, with a real provider).
                    async for data in _sse_data(response):
                        if answer is not None or data == b"[DONE]":
                            continue
                        chunk = orjson.loads(data)
                        if generation_id is None and chunk.get("id"):
                            generation_id = chunk["id"]
                            recorder.generation(handle, generation_id)
                        for choice in chunk.get("choices") or ():
                            parts.append((choice.get("delta") or {}).get("content") or "")
                            if choice.get("finish_reason"):
                                ending["finish_reason"] = choice["finish_reason"]
                            if choice.get("error") or choice.get("finish_reason") == "error":
                                ending["error"] = ending["error"] or _stream_error(
                                    choice.get("error") or "the provider ended the answer with an error", chunk)
                        if chunk.get("error"):
                            ending["error"] = _stream_error(chunk["error"], chunk)
                        if chunk.get("usage"):
                            usage = Usage.from_openrouter(chunk["usage"], images=_images(body))
                            answer = self._settle(model, usage, ending, parts, recorder, handle, generation_id)
                return self._conclude(model, answer, ending, recorder, handle, generation_id)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                if answer is not None:  # cut after the usage was recorded: the answer stands as it is
                    return self._conclude(model, answer, ending, recorder, handle, generation_id)
                raise self._cut(recorder, handle, generation_id, f"{type(e).__name__}: {e}".rstrip(": ")) from None
            except orjson.JSONDecodeError as e:
                raise self._cut(recorder, handle, generation_id, f"malformed stream chunk: {e}") from None
            except asyncio.CancelledError:
                if answer is None:
                    self._cut(recorder, handle, generation_id, "cancelled")
                raise

    def worst_case(self, body: dict) -> float:
        """The most this request can cost (see infra/budget.py)."""
        # no tokenizer splits text finer than a byte; each image at the bound of its size
        text_bytes = sum(len(_text_of(m).encode()) + 8 for m in body["messages"])
        image_tokens = sum(image_tokens_bound(part["image_url"]["url"]) for part in _image_parts(body))
        return self.costs.worst_case(body["model"], text_bytes + image_tokens,
                                     body["max_tokens"], _images(body), ceiling=self.ceiling)

    def _settle(self, model, usage, chunk, parts, recorder, handle, generation_id):
        """The usage has arrived: record its cost first, then look at the answer. `chunk` says
        how the stream ended so far: its error message, if any, and its finish reason."""
        computed = self.costs.cost(model, usage)
        provider = usage.cost
        error = chunk.get("error")
        cut = chunk.get("finish_reason") == "length"
        status = "failed" if error or cut else "ok"
        message = error or ("answer cut at max_tokens (finish_reason length)" if cut else None)
        if computed is None and provider is None and generation_id is not None:
            # a variable price and no cost in the usage: only the provider's record can say
            self._settle_later(recorder, handle, generation_id, status, message)
            return "".join(parts), usage, 0.0
        recorded = recorder.finish(handle, status, usage, computed, provider, message, generation_id)
        # compared where both are token prices: not for a variable price (no computed cost),
        # nor with BYOK (the provider's figure is OpenRouter's fee)
        if None not in (provider, computed) and usage.upstream_cost is None and not same_cost(provider, computed):
            log_event(log, "provider cost differs from computed cost", logging.WARNING, model=model,
                      generation_id=generation_id, provider_cost=provider, computed_cost=computed)
        return "".join(parts), usage, recorded

    def _conclude(self, model, answer, ending, recorder, handle, generation_id):
        """The stream is over: the answer, or why this attempt failed."""
        if answer is None:  # no usage came: the provider's record says what it billed
            raise self._cut(recorder, handle, generation_id, ending["error"] or "stream ended without usage")
        finish = ending["finish_reason"]
        if ending["error"] and finish != "length":  # HTTP 200 with an error: billed, failed, worth another try
            raise RetryableError(f"{model}: {ending['error']}")
        return (*answer, finish, handle)

    def _fail_http(self, response: httpx.Response, body: bytes, recorder, handle) -> None:
        """A non-200 answer: nothing was generated, so nothing was billed."""
        message = _provider_message(response, body)
        recorder.finish(handle, "failed", None, 0.0, None, message, None)
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise RetryableError(message, _retry_after(response, body))
        if status == 404 and "parameters" in message:
            raise _NoEndpoint(message)
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
            self._settle_later(recorder, handle, generation_id, "failed", message)
        return RetryableError(message)

    def _settle_later(self, recorder, handle, generation_id, status, message) -> None:
        """Record the attempt as the provider's record of it says, once it has one."""
        task = asyncio.get_running_loop().create_task(
            self._settle_from_provider(recorder, handle, generation_id, status, message))
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _settle_from_provider(self, recorder, handle, generation_id, status, message) -> None:
        stats = await self.generation_stats(generation_id)
        if stats is None:
            recorder.unresolved(handle)
            return
        usage, cost = stats
        recorder.finish(handle, status, usage, None, cost, message, generation_id)

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
            if stats is None and time.time() - call.started_at > GENERATION_KNOWN_WITHIN_S:
                # a day on, the provider has no record of it: it was never generated, nor billed
                recorder.finish(call.call_id, "lost", None, 0.0, None,
                                "the provider has no record of this generation a day later", call.generation_id)
                counts["lost"] += 1
                return
            if stats is None:
                counts["unresolved"] += 1
                log_event(log, "generation not yet known to the provider; left pending", logging.WARNING,
                          call_id=call.call_id, generation_id=call.generation_id)
                return
            usage, cost = stats
            try:  # ours beside the provider's figure; a model since retired has no price: the bill says
                computed = self.costs.cost(call.model, usage) if usage.prompt_tokens else None
            except PricingError:
                computed = None
            recorder.finish(call.call_id, "recovered", usage, computed, cost,
                            "run ended mid-call; cost from the provider", call.generation_id)
            counts["recovered"] += 1

        await asyncio.gather(*(one(c) for c in pending))
        return counts


class _Traced:
    """A recorder that keeps what one attempt did (its HTTP status, its cost once known), for
    the run's log; the rest is its inner recorder's."""

    def __init__(self, inner: CallRecorder):
        self.inner = inner
        self.http_status: int | None = None
        self.cost: float | None = None  # None: not known yet (settled from the provider later)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def finish(self, handle, status, usage, computed, provider, error, generation_id) -> float:
        self.cost = self.inner.finish(handle, status, usage, computed, provider, error, generation_id)
        return self.cost


def _log_attempt(model: str, recorder: CallRecorder, number: int, traced: _Traced,
                 error: BaseException | None, seconds: float) -> None:
    """One line of the run's log for one attempt: its page, outcome, cause, HTTP status, cost,
    time, and (retried) the provider's Retry-After and the wait before the next attempt."""
    if error is None:
        outcome, cause = "ok", None
    elif isinstance(error, asyncio.CancelledError):
        outcome, cause = "cancelled", "cancelled"
    else:
        outcome = "retried" if getattr(error, "wait", None) is not None else "failed"
        cause = _cause(error, traced.http_status, model)
    log_event(log, f"{_page_of(recorder)}attempt {number} with {model}: {outcome}" + (f" ({cause})" if cause else ""),
              logging.INFO, event="attempt", stage=getattr(recorder, "stage", None), page=recorder.page,
              model=model, attempt=number, outcome=outcome, cause=cause, http_status=traced.http_status,
              retry_after=getattr(error, "retry_after", None), wait_s=getattr(error, "wait", None),
              seconds=round(seconds, 3), cost_usd=traced.cost,
              error=None if error is None or isinstance(error, asyncio.CancelledError) else str(error))


def _cause(error: BaseException, http_status: int | None, model: str) -> str:
    """What made an attempt fail, in a few words to count by: `HTTP 429`, `ReadTimeout`,
    `malformed stream chunk`, `error during generation from Google`, `BudgetReached`."""
    if http_status is not None and http_status != 200:
        return f"HTTP {http_status}"
    if not isinstance(error, RetryableError):
        return type(error).__name__
    return str(error).removeprefix(f"{model}: ").split(":")[0]


def _page_of(recorder: CallRecorder) -> str:
    return f"page {recorder.page}: " if recorder.page is not None else ""


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or () if part.get("type") == "text")


def _image_parts(body: dict) -> list[dict]:
    return [part for m in body["messages"] if isinstance(m.get("content"), list)
            for part in m["content"] if part.get("type") == "image_url"]


def _images(body: dict) -> int:
    return len(_image_parts(body))


# Keywords some providers refuse in a strict schema (OpenAI: "not permitted"); the pydantic
# model keeps them and still checks the answer against them.
UNSTRICT_KEYWORDS = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "format", "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "default"})
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONES = ("items", "additionalProperties", "not", "contains")


@functools.cache
def strict_schema(schema: type[BaseModel]) -> dict:
    """The JSON schema sent as `response_format`, valid under strict mode for every provider:
    each object closed (`additionalProperties: false`) with every property in `required`, and
    none of UNSTRICT_KEYWORDS. Built once per model class (pydantic takes about a millisecond)."""
    return _strict(schema.model_json_schema(), schema.__name__)


def _strict(node, where: str):
    if not isinstance(node, dict):
        return node
    if "$ref" in node:  # strict mode takes no keyword beside a $ref (not even a description)
        return {"$ref": node["$ref"]}
    out = {}
    for key, value in node.items():
        if key in UNSTRICT_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _strict(sub, f"{where}.{name}") for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_strict(sub, where) for sub in value]
        elif key in _SCHEMA_ONES and isinstance(value, dict):
            out[key] = _strict(value, where)
        else:
            out[key] = value
    if out.get("type") == "object" or "properties" in out:
        if isinstance(out.get("additionalProperties"), dict):
            raise TypeError(f"{where}: a free-form mapping cannot be a strict structured output; "
                            "give it a model with named fields")
        out["additionalProperties"] = False
        out["required"] = list(out.get("properties") or {})
    return out


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

