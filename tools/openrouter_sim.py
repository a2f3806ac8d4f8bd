"""A local OpenRouter-compatible server, for the demo, the tests and fault and load testing.

It stands in for OpenRouter the way stripe-mock stands in for Stripe: the same HTTP shapes
(`/models`, `/chat/completions` streamed or whole, `/generation`, `/credits`, `/key`; the
shapes of the real payloads in tests/fixtures/openrouter/), and it bills as the real service
does:
- a whole (non-streamed) answer is billed once generated, even if the client has gone;
- a stream sends its headers (with `X-Generation-Id`) at once, then `: OPENROUTER PROCESSING`
  comments while "the provider" works (--processing-ms), then the content's data chunks
  (at most 4 an answer; --chunk-tokens N: N tokens each, as providers stream them), the
  finish chunk, the usage chunk (with `cost`), `data: [DONE]`;
- a stream left by the client after its headers but before its first data chunk is not
  billed, as providers that cancel on abort bill it; --bill-abandoned: generated to its end
  anyway and billed in full, as providers that keep generating bill it (Google does);
- a stream cut by the client after its first data chunk is billed for the prompt and the
  tokens sent until the cut (`/generation` says so, cancelled); one cut before any content
  was sent is not billed; nor are 4xx/5xx answers;
- --byok: the provider bills the upstream cost to the user's own key, OpenRouter charges
  its fee (`cost`, and what /credits counts); /key shows both, as OpenRouter's does.
Its answer to a correction request is a real, deterministic correction of the text between
<ocr_text> and </ocr_text> (OCR confusions and a spelling dictionary), so the demo's output
is better than its input. Faults are injected at the rates given on the command line.

    python -m tools.openrouter_sim --port 0 [--latency-ms 200] [--fail-429 0.1] ...
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import re
import secrets
import signal
import string
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache

from aiohttp import web

API = "/api/v1"

# USD per token (per image, per request); strings, as OpenRouter gives them.
MODELS: list[dict] = [
    {"id": "google/gemini-2.5-flash", "name": "Google: Gemini 2.5 Flash", "context_length": 1048576,
     "modalities": ["text", "image"],
     "pricing": {"prompt": "0.0000003", "completion": "0.0000025", "request": "0", "image": "0.001238",
                 "input_cache_read": "0.000000075", "input_cache_write": "0.0000003833",
                 "internal_reasoning": "0", "web_search": "0"}},
    {"id": "google/gemini-2.5-flash-lite", "name": "Google: Gemini 2.5 Flash Lite", "context_length": 1048576,
     "modalities": ["text", "image"],
     "pricing": {"prompt": "0.0000001", "completion": "0.0000004", "request": "0", "image": "0",
                 "input_cache_read": "0.000000025", "internal_reasoning": "0", "web_search": "0"}},
    {"id": "google/gemini-2.5-pro", "name": "Google: Gemini 2.5 Pro", "context_length": 1048576,
     "modalities": ["text", "image"], "reasoning": True,
     "pricing": {"prompt": "0.00000125", "completion": "0.00001", "request": "0", "image": "0.00516",
                 "input_cache_read": "0.00000031", "input_cache_write": "0.000001625",
                 "internal_reasoning": "0", "web_search": "0"}},
    # Long-context pricing, as OpenRouter lists it (models_subset_2026-08.json): a prompt of
    # at least min_prompt_tokens is billed, all of it, at the override's prices.
    {"id": "anthropic/claude-sonnet-4.5", "name": "Anthropic: Claude Sonnet 4.5", "context_length": 1000000,
     "modalities": ["text", "image"],
     "pricing": {"prompt": "0.000003", "completion": "0.000015", "request": "0", "image": "0.0048",
                 "input_cache_read": "0.0000003", "input_cache_write": "0.00000375",
                 "internal_reasoning": "0", "web_search": "0.01",
                 "overrides": [{"min_prompt_tokens": 200000, "prompt": "0.000006", "completion": "0.0000225",
                                "input_cache_read": "0.0000006", "input_cache_write": "0.0000075"}]}},
    {"id": "openai/gpt-4o-mini", "name": "OpenAI: GPT-4o-mini", "context_length": 128000,
     "modalities": ["text", "image"],
     "pricing": {"prompt": "0.00000015", "completion": "0.0000006", "request": "0", "image": "0.000217",
                 "input_cache_read": "0.000000075", "web_search": "0"}},
    {"id": "openai/o4-mini", "name": "OpenAI: o4 Mini", "context_length": 200000,
     "modalities": ["text", "image"], "reasoning": True,
     "pricing": {"prompt": "0.0000011", "completion": "0.0000044", "request": "0", "image": "0.0008415",
                 "input_cache_read": "0.000000275", "internal_reasoning": "0.0000044", "web_search": "0"}},
    {"id": "deepseek/deepseek-r1", "name": "DeepSeek: R1", "context_length": 163840,
     "modalities": ["text"], "reasoning": True,
     "pricing": {"prompt": "0.0000004", "completion": "0.000002", "request": "0", "image": "0",
                 "internal_reasoning": "0.000003", "web_search": "0"}},
    {"id": "meta-llama/llama-3.3-70b-instruct", "name": "Meta: Llama 3.3 70B Instruct",
     "context_length": 131072, "modalities": ["text"],
     "pricing": {"prompt": "0.00000013", "completion": "0.0000004", "request": "0", "image": "0",
                 "web_search": "0"}},
    {"id": "qwen/qwen2.5-vl-72b-instruct", "name": "Qwen: Qwen2.5 VL 72B Instruct", "context_length": 32000,
     "modalities": ["text", "image"],
     "pricing": {"prompt": "0.00000025", "completion": "0.00000075", "request": "0.0002",
                 "image": "0.0004", "web_search": "0", "discount": 0.25}},
    {"id": "mistralai/mistral-small-3.2-24b-instruct:free", "name": "Mistral Small 3.2 (free)",
     "context_length": 131072, "modalities": ["text", "image"],
     "pricing": {"prompt": "0", "completion": "0", "request": "0", "image": "0", "web_search": "0"}},
]
BY_ID = {m["id"]: m for m in MODELS}

# A router, not a model: its price is "-1" (variable) in /models, and each request is billed
# at the price of the model it was routed to (models_variable_price_reconstructed.json).
AUTO_MODEL = {"id": "openrouter/auto", "name": "Auto Router", "context_length": 2000000,
              "modalities": ["text", "image"], "pricing": {"prompt": "-1", "completion": "-1"}}
AUTO_ROUTES_TO = "google/gemini-2.5-flash"  # fixed, so that a test knows the price to expect

# The upstream provider each vendor's models are served by (the `provider` of every chunk,
# `provider_name` of /generation and of a provider's error).
PROVIDERS = {"google": "Google AI Studio", "openai": "OpenAI", "anthropic": "Anthropic",
             "deepseek": "DeepSeek", "meta-llama": "Together", "qwen": "Alibaba", "mistralai": "Mistral"}
USER_ID = "user_2localSimulatorUser0000000"  # the top-level user_id of OpenRouter's error bodies


def provider_name(model_id: str) -> str:
    return PROVIDERS.get(model_id.split("/", 1)[0], "Local")


def _price(pricing: dict, key: str) -> float | None:
    value = pricing.get(key)
    return None if value is None else float(value)


def rates(model: dict, prompt_tokens: int) -> dict:
    """The model's prices for a request of `prompt_tokens`: its overrides' past their threshold."""
    pricing = model["pricing"]
    for override in pricing.get("overrides") or ():
        if prompt_tokens >= override["min_prompt_tokens"]:
            pricing = {**pricing, **override}
    return pricing


def bill_parts(model: dict, prompt: int, cached: int, cache_write: int, completion: int, reasoning: int,
               images: int) -> tuple[float, float]:
    """What the provider charges, (prompt side, completion side): OpenRouter's
    upstream_inference_prompt_cost and _completions_cost. Written apart from ar's own
    CostCalculator on purpose."""
    pricing = rates(model, prompt)
    p = _price(pricing, "prompt")
    read = _price(pricing, "input_cache_read")
    write = _price(pricing, "input_cache_write")
    think = _price(pricing, "internal_reasoning") or 0.0
    c = _price(pricing, "completion")
    asked = (prompt - cached - cache_write) * p
    asked += cached * (p if read is None else read)
    asked += cache_write * (p if write is None else write)
    asked += images * (_price(pricing, "image") or 0.0) + (_price(pricing, "request") or 0.0)
    answered = (completion - reasoning) * c + reasoning * (think if think > 0 else c)
    keep = 1 - float(pricing.get("discount", 0))
    return asked * keep, answered * keep


def bill(model: dict, prompt: int, cached: int, cache_write: int, completion: int, reasoning: int,
         images: int) -> float:
    return sum(bill_parts(model, prompt, cached, cache_write, completion, reasoning, images))


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


# ---- the corrector: real OCR fixes, deterministic -------------------------------------

_CONFUSIONS = [("rn", "m"), ("m", "rn"), ("cl", "d"), ("vv", "w"), ("li", "h"), ("ii", "n"), ("tb", "th"),
               ("b", "h"), ("h", "b"), ("c", "e"), ("e", "c"), ("0", "o"), ("1", "l"), ("l", "i"),
               ("5", "s"), ("8", "B"), ("q", "g"), ("n", "u"), ("u", "n"), ("f", "t"), ("I", "l")]
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")


@lru_cache(maxsize=1)
def _speller():
    from spellchecker import SpellChecker

    return SpellChecker(distance=1)


def _known(word: str) -> bool:
    return bool(_speller().known([word.lower()]))


def _recase(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


@lru_cache(maxsize=65536)
def correct_word(word: str) -> str:
    if word.isdigit() or len(word) < 2 or _known(word):
        return word
    lower = word.lower()
    candidates = []
    for wrong, right in _CONFUSIONS:
        start = lower.find(wrong.lower())
        while start != -1:
            candidate = lower[:start] + right.lower() + lower[start + len(wrong):]
            if _known(candidate):
                candidates.append(candidate)
            start = lower.find(wrong.lower(), start + 1)
    if candidates:
        return _recase(_likeliest(candidates), word)
    split = _split_in_two(lower)
    if split:  # OCR lost the space between two words: "nota" -> "not a"
        return _recase(split, word)
    # No misreading of letter shapes explains it: a dialect or archaic form ("warn't",
    # "scrouched"), a name, a term. A faithful corrector keeps it, as ar's prompts ask; the
    # nearest dictionary word would modernise the page.
    return word


def _likeliest(words) -> str | None:
    """The most frequent of `words`; a tie goes to the first in alphabetical order, never to
    the order of a set (pyspellchecker's own `correction` takes that one: it changes with
    the process's hash seed, so two runs could differ by a word)."""
    speller = _speller()
    return min(words, key=lambda w: (-speller.word_usage_frequency(w), w), default=None)


# A word at least this frequent (pyspellchecker's usage frequency) may be one half of two run
# together: "nota" is "not a", but "druther" is not "dr uther", nor "Tarzana" "Tarzan a".
COMMON_WORD = 1e-6


def _split_in_two(word: str) -> str | None:
    """Two common words whose concatenation is `word`, the likeliest pair; None if none."""
    speller = _speller()
    pairs = [(word[:i], word[i:]) for i in range(1, len(word))
             if (len(word[:i]) > 1 or word[:i] in "ai") and (len(word[i:]) > 1 or word[i:] in "ai")
             and min(speller.word_usage_frequency(word[:i]), speller.word_usage_frequency(word[i:])) >= COMMON_WORD]
    if not pairs:
        return None
    left, right = max(pairs, key=lambda p: min(speller.word_usage_frequency(p[0]),
                                               speller.word_usage_frequency(p[1])))
    return f"{left} {right}"


# Specks read as punctuation: a lone mark at either end of a line, or a lone _ | ~ anywhere.
_STRAY = re.compile(r"(?m)^[^\S\n]*[_|~—.,:;'\"*]+[^\S\n]*(?:\n|$)|^[^\S\n]*[_|~—:.,;'\"*]+[^\S\n]+|"
                    r"[^\S\n]+[_|~—:;'\"*]+[^\S\n]*$|(?<=\s)[_|~]+[^\S\n]+(?=\S)")


def correct_text(text: str) -> tuple[str, list[str], int]:
    """(corrected text, changes, words) with line structure kept and line-end hyphens joined."""
    text = re.sub(r"([A-Za-z]+)-\n([a-z]+)[^\S\n]?", r"\1\2\n", text)
    changes: list[str] = [f"{m.group(0).strip()!r} -> ''" for m in _STRAY.finditer(text)]
    text = _STRAY.sub("", text)
    words = 0

    def fix(match: re.Match) -> str:
        nonlocal words
        words += 1
        old = match.group(0)
        new = correct_word(old)
        if new != old:
            changes.append(f"{old} -> {new}")
        return new

    return _WORD.sub(fix, text), changes, words


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or () if p.get("type") == "text")


def _short_image(part: dict) -> dict:
    """A message part, an image's data URL cut to its start and size."""
    url = (part.get("image_url") or {}).get("url", "")
    return {**part, "image_url": {"url": f"{url[:30]}...({len(url)} chars)"}} if url else part


def _images(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if p.get("type") == "image_url")


# What an unfaithful model adds to a page (--fail-invent): fluent, plausible, never printed.
INVENTED = ("And so the evening passed, as such evenings do, with nothing said that anyone "
            "would remember in the morning.")


def unfaithful_text(text: str, kind: str) -> str:
    """The page as an unfaithful model gives it back: with a paragraph of its own making half
    the page's length ("invent"), or without the last 40% of its lines ("truncate")."""
    if kind == "invent":
        return text + "\n\n" + "\n".join([INVENTED] * max(1, len(text) // 2 // len(INVENTED)))
    lines = text.splitlines()
    return "\n".join(lines[: max(1, math.ceil(len(lines) * 0.6))])


def answer_for(messages: list[dict], response_format: dict | None, malformed: bool,
               unfaithful: str | None = None) -> str:
    # The latest user message with a page in it: a re-ask after an invalid answer ("That answer
    # is not valid...") comes after it, and a model answers it about the same page.
    texts = (_message_text(m) for m in reversed(messages) if m.get("role") == "user")
    found = next(filter(None, (re.search(r"<ocr_text>\n?(.*?)\n?</ocr_text>", t, re.S) for t in texts)), None)
    corrected, changes, words = correct_text(found.group(1)) if found else (
        "This is the local OpenRouter-compatible server.", [], 0)
    if unfaithful is not None:
        corrected = unfaithful_text(corrected, unfaithful)
    confidence = round(max(0.0, 1.0 - 3 * len(changes) / words), 3) if words else 1.0
    schema = ((response_format or {}).get("json_schema") or {}).get("schema")
    if schema is None:
        return corrected
    known = {"text": corrected, "confidence": confidence, "changes": changes, "unsure": confidence < 0.8}
    neutral = {"string": "", "number": 0, "integer": 0, "boolean": False, "array": [], "object": {}}
    answer = {name: known.get(name, neutral.get(spec.get("type"), None))
              for name, spec in (schema.get("properties") or {}).items()}
    body = json.dumps(answer, ensure_ascii=False)
    return body[: len(body) // 2] if malformed else body


# ---- the server ----------------------------------------------------------------------

PROCESSING_EVERY_S = 0.1  # between two ": OPENROUTER PROCESSING" comments while the provider works
PROCESSING = b": OPENROUTER PROCESSING\n\n"
# The choice-level error of a stream the provider broke off (chat_completion_choice_error_doc.json).
CHOICE_ERROR = {"code": 502, "message": "Provider disconnected mid-stream",
                "metadata": {"error_type": "provider_unavailable"}}
_ID_CHARS = string.ascii_letters + string.digits


@dataclass
class Options:
    latency_ms: float = 0
    jitter_ms: float = 0
    seed: int | None = None
    fail_429: float = 0
    fail_500: float = 0
    fail_timeout: float = 0
    fail_malformed: float = 0
    fail_midstream: float = 0
    fail_400: float = 0
    fail_choice_error: float = 0
    fail_invent: float = 0
    fail_truncate: float = 0
    faults_model: str | None = None
    stream_ms: float = 0
    processing_ms: float = 0
    chunk_tokens: int = 0
    reasoning_tokens: int | None = None
    bill_abandoned: bool = False
    auto_router: bool = False
    byok: bool = False
    byok_fee: float = 0.05
    retry_after: float = 1
    fail_429_request: int | None = None
    credits: float | None = None
    api_key: str | None = None
    generation_delay_ms: float = 300
    state: str | None = None
    log_requests: str | None = None


@dataclass
class Generation:
    id: str
    model: str
    prompt: int
    cached: int
    cache_write: int
    images: int
    completion: int = 0
    reasoning: int = 0
    cost: float = 0.0  # what OpenRouter charged: the upstream cost, or with --byok its fee
    upstream_prompt: float = 0.0  # what the provider billed, prompt side
    upstream_completion: float = 0.0  # and completion side
    status: str = "running"  # running | complete | cut | cancelled | error
    finish_reason: str | None = None
    streamed: bool = False
    abandoned: bool = False  # the client left before the first data chunk; generated and billed anyway
    byok: bool = False
    provider: str = "Local"
    router: str | None = None  # "openrouter/auto" when the request named the router
    created: float = field(default_factory=time.time)
    ended: float | None = None

    @property
    def upstream(self) -> float:
        return self.upstream_prompt + self.upstream_completion


@dataclass
class Answer:
    """What the model says to one request, decided before any byte is sent."""

    content: str
    reasoning: int  # reasoning tokens, counted in completion_tokens and against max_tokens
    finish: str  # stop | length | error
    failure: str | None = None  # None | "midstream" (nothing generated) | "choice" (broken off halfway)

    @property
    def completion(self) -> int:
        return tokens(self.content) + self.reasoning


def new_generation_id() -> str:
    """gen-<unix time>-<20 letters and digits>, the form of every recorded id."""
    return f"gen-{int(time.time())}-{''.join(secrets.choice(_ID_CHARS) for _ in range(20))}"


def strict_schema_problem(schema: dict, context: tuple = ()) -> str | None:
    """Why OpenAI's strict mode refuses `schema` (its own words), or None: every object must
    say additionalProperties: false and list every property in `required`."""
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        missing = [name for name in schema.get("properties") or {} if name not in (schema.get("required") or ())]
        if missing:
            return (f"In context={context}, 'required' is required to be supplied and to be an array "
                    f"including every key in properties. Missing '{missing[0]}'.")
    children = [(("properties", k), v) for k, v in (schema.get("properties") or {}).items()]
    children += [(("$defs", k), v) for k, v in (schema.get("$defs") or {}).items()]
    children += [(("anyOf", str(i)), v) for i, v in enumerate(schema.get("anyOf") or ())]
    if isinstance(schema.get("items"), dict):
        children.append((("items",), schema["items"]))
    for where, child in children:
        problem = strict_schema_problem(child, context + where) if isinstance(child, dict) else None
        if problem:
            return problem
    return None


class Chunks:
    """The bytes of one stream's `data:` events, every one with the generation's id. Content
    chunks, hundreds an answer, are spliced from a template: one json.dumps a chunk is
    server CPU that a load test would count against the client."""

    def __init__(self, gen: Generation):
        self.base = {"id": gen.id, "provider": gen.provider, "model": gen.model,
                     "object": "chat.completion.chunk", "created": int(gen.created)}
        head = json.dumps(self.base, separators=(",", ":"))[:-1]
        self._head = f'data: {head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":'.encode()
        self._tail = b'},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'

    def content(self, piece: str) -> bytes:
        return self._head + json.dumps(piece).encode() + self._tail

    def event(self, payload: dict) -> bytes:
        return b"data: " + json.dumps({**self.base, **payload}, separators=(",", ":")).encode() + b"\n\n"

    def finish(self, reason: str) -> bytes:
        return self.event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": reason, "native_finish_reason": reason, "logprobs": None}]})

    def usage(self, usage: dict) -> bytes:
        """The last chunk before [DONE], apart from the finish chunk (chat_stream_gpt4o_usage.sse)."""
        return self.event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None, "native_finish_reason": None, "logprobs": None}],
                           "usage": usage})


class Wire:
    """One streamed answer's connection, and how far it got: a cut is billed by that."""

    def __init__(self, request: web.Request, response: web.StreamResponse):
        self.request, self.response = request, response
        self.headers_sent = False
        self.data_sent = False  # a `data:` chunk has gone out: the client has the id from the body

    def open(self) -> bool:
        return self.request.transport is not None and not self.request.transport.is_closing()

    async def start(self) -> None:
        await self.response.prepare(self.request)  # a StreamResponse's headers go out at once
        # A client that died after sending its request has its EOF queued already, but the
        # event loop runs this task before it reads that EOF: two turns of the loop let it,
        # so that "the headers reached the client" is not said of a client already gone.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.headers_sent = self.open()
        if not self.headers_sent:
            raise ConnectionResetError("client went away")

    async def comment(self) -> None:
        await self._write(PROCESSING)

    async def data(self, chunk: bytes) -> None:
        await self._write(chunk)
        self.data_sent = True

    async def done(self) -> None:
        await self._write(b"data: [DONE]\n\n")
        await self.response.write_eof()

    async def _write(self, data: bytes) -> None:
        if not self.open():
            raise ConnectionResetError("client went away")
        await self.response.write(data)


def pieces(content: str, chunk_tokens: int) -> list[str]:
    """The content chunks of a streamed answer: `chunk_tokens` tokens (4 characters) each, as
    providers stream them; 0: at most 4 pieces."""
    if not content:
        return [""]
    if chunk_tokens > 0:
        size = chunk_tokens * 4
    else:
        size = math.ceil(len(content) / max(1, min(4, len(content) // 64)))
    return [content[i:i + size] for i in range(0, len(content), size)]


class Simulator:
    _journal = None  # the --state file, appended to once replayed

    def __init__(self, options: Options):
        self.o = options
        self.rng = random.Random(options.seed)
        self.generations: dict[str, Generation] = {}
        self.total_usage = 0.0  # what OpenRouter charged: /credits total_usage, /key usage
        self.byok_usage = 0.0  # what providers billed to the user's own keys: /key byok_usage
        self.requests: dict[str, int] = {}
        self.chats = 0  # chat requests received, in order of arrival
        self.seen_prompts: set[tuple[str, str]] = set()
        self.connections: set[tuple] = set()  # client (host, port) pairs: one per TCP connection
        self._requests_log = open(options.log_requests, "a", encoding="utf-8") if options.log_requests else None

    def replay(self, path: str) -> None:
        """A restarted server keeps what it billed, like the real service after an outage.

        Every generation is appended to the journal when it starts and when it is charged;
        one still running when the server died is closed as cancelled: never billed."""
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    gen = Generation(**json.loads(line))
                    self.generations[gen.id] = gen
        except FileNotFoundError:
            pass
        for gen in self.generations.values():
            if gen.ended is None:
                gen.status, gen.finish_reason, gen.ended = "cancelled", "cancelled", time.monotonic()
            self._account(gen)
        self._journal = open(path, "a", encoding="utf-8")

    def _record(self, gen: Generation) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps(gen.__dict__) + "\n")
            self._journal.flush()  # in the kernel's hands: survives the server's SIGKILL

    def _account(self, gen: Generation) -> None:
        self.total_usage += gen.cost
        if gen.byok:
            self.byok_usage += gen.upstream

    def log_request(self, body: dict, arrived: float) -> None:
        """--log-requests: each chat request's body as a JSON line, an image's data as its size,
        with `received_at`: when it arrived (epoch seconds, this machine's clock)."""
        if self._requests_log is not None:
            messages = [{**m, "content": [_short_image(p) for p in m["content"]]}
                        if isinstance(m.get("content"), list) else m for m in body["messages"]]
            self._requests_log.write(json.dumps({**body, "messages": messages, "received_at": arrived}) + "\n")
            self._requests_log.flush()

    def count(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate  # no draw at rate 0: a seed's draws stay put

    def fault(self, rate: float, model: dict) -> bool:
        """A fault drawn for a request to `model` (with --faults-model, only that model has any)."""
        return self.o.faults_model in (None, model["id"]) and self.roll(rate)

    def charge(self, gen: Generation, completion: int, reasoning: int, status: str, reason: str | None) -> None:
        gen.completion, gen.reasoning = completion, reasoning
        if status != "cancelled":
            gen.upstream_prompt, gen.upstream_completion = bill_parts(
                BY_ID[gen.model], gen.prompt, gen.cached, gen.cache_write, completion, reasoning, gen.images)
        # BYOK: the provider bills the user's own key; OpenRouter charges only its fee
        gen.cost = gen.upstream * self.o.byok_fee if gen.byok else gen.upstream
        gen.status, gen.finish_reason, gen.ended = status, reason, time.monotonic()
        self._account(gen)
        self._record(gen)

    @staticmethod
    def usage(gen: Generation) -> dict:
        """The usage object, with the fields and nesting of the real ones. Off BYOK the upstream
        cost is filled, equal to `cost`, as in OpenRouter's 2026 answers (it was null in 2025)."""
        return {"prompt_tokens": gen.prompt, "completion_tokens": gen.completion,
                "total_tokens": gen.prompt + gen.completion, "cost": gen.cost, "is_byok": gen.byok,
                "prompt_tokens_details": {"cached_tokens": gen.cached, "cache_write_tokens": gen.cache_write},
                "cost_details": {"upstream_inference_cost": gen.upstream,
                                 "upstream_inference_prompt_cost": gen.upstream_prompt,
                                 "upstream_inference_completions_cost": gen.upstream_completion},
                "completion_tokens_details": {"reasoning_tokens": gen.reasoning}}

    # -- helpers --

    @staticmethod
    def error(status: int, message: str, headers: dict | None = None) -> web.Response:
        return web.json_response({"error": {"code": status, "message": message, "metadata": {}}},
                                 status=status, headers=headers)

    def provider_error(self, provider: str, message: str, param: str | None = None) -> web.Response:
        """A 400 the provider gave: OpenRouter passes its body on as a string in metadata.raw."""
        raw = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                    "code": None}}, indent=2)
        return web.json_response({"error": {"message": "Provider returned error", "code": 400, "metadata": {
            "raw": raw, "provider_name": provider, "is_byok": self.o.byok}}, "user_id": USER_ID}, status=400)

    def authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return False
        return self.o.api_key is None or auth[7:] == self.o.api_key

    def unauthorized(self) -> web.Response:
        return self.error(401, "No auth credentials found")

    async def pause(self, arrived: float) -> None:
        """Until the latency has passed since the request arrived: a provider's latency is the
        time to its first token, its own work on the request included."""
        delay = self.o.latency_ms + (self.rng.uniform(0, self.o.jitter_ms) if self.o.jitter_ms else 0)
        left = delay / 1000 - (time.monotonic() - arrived)
        if left > 0:
            await asyncio.sleep(left)

    def new_generation(self, model: dict, messages: list[dict], router: str | None) -> Generation:
        prompt = sum(tokens(_message_text(m)) for m in messages)
        system = "\n".join(_message_text(m) for m in messages if m.get("role") == "system")
        cached = cache_write = 0
        if system:
            key = (model["id"], system)
            if key in self.seen_prompts and _price(model["pricing"], "input_cache_read") is not None:
                cached = tokens(system)
            elif key not in self.seen_prompts and _price(model["pricing"], "input_cache_write") is not None:
                cache_write = tokens(system)
            self.seen_prompts.add(key)
        gen = Generation(id=new_generation_id(), model=model["id"], prompt=prompt, cached=cached,
                         cache_write=cache_write, images=_images(messages), byok=self.o.byok,
                         provider=provider_name(model["id"]), router=router)
        self.generations[gen.id] = gen
        self._record(gen)
        return gen

    def plan(self, model: dict, content: str, max_tokens: int) -> Answer:
        """The answer within max_tokens: a reasoning model thinks first (--reasoning-tokens, or
        about a quarter of its answer), and what does not fit is cut: finish_reason "length"."""
        reasoning = 0
        if model.get("reasoning"):
            wanted = self.o.reasoning_tokens if self.o.reasoning_tokens is not None else 64 + tokens(content) // 4
            cap = max_tokens if self.o.reasoning_tokens is not None else max_tokens // 4
            reasoning = min(wanted, cap)
        room = max_tokens - reasoning
        if tokens(content) > room:
            return Answer(content[: room * 4], reasoning, "length")
        return Answer(content, reasoning, "stop")

    # -- endpoints --

    def catalog(self) -> list[dict]:
        return MODELS + [AUTO_MODEL] if self.o.auto_router else MODELS

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m["id"], "name": m["name"], "context_length": m["context_length"],
                 "architecture": {"input_modalities": m["modalities"], "output_modalities": ["text"]},
                 "pricing": m["pricing"]} for m in self.catalog()]
        return web.json_response({"data": data})

    async def credits(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.unauthorized()
        total = self.o.credits if self.o.credits is not None else 1e9
        return web.json_response({"data": {"total_credits": total, "total_usage": self.total_usage}})

    async def key(self, request: web.Request) -> web.Response:
        """GET /key (key_doc_example.json). OpenRouter's docs: `usage` is the "total OpenRouter
        credit usage" of the key (what it charged: BYOK fees, not the upstream cost) and
        `byok_usage` the "total external BYOK usage" (what providers billed to the user's own
        keys), counted into the limit only if include_byok_in_limit. Abandoned generations that
        were billed count in both, like any other. This key has no limit (null) and no reset."""
        if not self.authorized(request):
            return self.unauthorized()
        token = request.headers["Authorization"][7:]
        label = f"{token[:12]}...{token[-3:]}" if len(token) > 20 else "sk-or-v1-..."
        return web.json_response({"data": {
            "label": label, "limit": None, "limit_remaining": None, "limit_reset": None,
            "include_byok_in_limit": False, "is_free_tier": False, "is_management_key": False,
            "is_provisioning_key": False, "expires_at": None, "creator_user_id": USER_ID,
            "usage": self.total_usage, "usage_daily": self.total_usage, "usage_weekly": self.total_usage,
            "usage_monthly": self.total_usage, "byok_usage": self.byok_usage,
            "byok_usage_daily": self.byok_usage, "byok_usage_weekly": self.byok_usage,
            "byok_usage_monthly": self.byok_usage,
            "rate_limit": {"requests": -1, "interval": "10s", "note": "This field is deprecated and safe to ignore."}}})

    async def generation(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.unauthorized()
        gen = self.generations.get(request.query.get("id", ""))
        if gen is None or gen.ended is None or \
                time.monotonic() < gen.ended + self.o.generation_delay_ms / 1000:
            return self.error(404, f"Generation {request.query.get('id')} not found")
        return web.json_response({"data": {
            "id": gen.id, "model": gen.model, "total_cost": gen.cost, "usage": gen.cost,
            "upstream_inference_cost": gen.upstream, "is_byok": gen.byok, "provider_name": gen.provider,
            "router": gen.router, "api_type": "completions",
            "tokens_prompt": gen.prompt, "tokens_completion": gen.completion,
            "native_tokens_prompt": gen.prompt, "native_tokens_completion": gen.completion,
            "native_tokens_reasoning": gen.reasoning, "native_tokens_cached": gen.cached,
            "num_media_prompt": gen.images, "streamed": gen.streamed,
            # the client left an abandoned stream: cancelled for it, though generated and billed
            "cancelled": gen.status in ("cut", "cancelled") or gen.abandoned,
            "finish_reason": gen.finish_reason, "native_finish_reason": gen.finish_reason,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(gen.created))}})

    async def sim_generations(self, request: web.Request) -> web.Response:
        data = [{"id": g.id, "model": g.model, "cost": g.cost, "status": g.status,
                 "prompt_tokens": g.prompt, "completion_tokens": g.completion, "abandoned": g.abandoned,
                 "is_byok": g.byok, "upstream_cost": g.upstream, "router": g.router}
                for g in self.generations.values()]
        return web.json_response({"data": data, "requests": self.requests, "total_usage": self.total_usage,
                                  "byok_usage": self.byok_usage, "connections": len(self.connections)})

    def _route(self, name) -> tuple[dict | None, str | None]:
        """(the model that answers, the router named) for the request's `model`."""
        if self.o.auto_router and name == AUTO_MODEL["id"]:
            return BY_ID[AUTO_ROUTES_TO], name
        return BY_ID.get(name), None

    def refusal(self, model: dict, body: dict) -> web.Response | None:
        """A 400 from the provider before anything is generated (never billed): OpenAI's strict
        mode refusing a schema, or the --fail-400 fault."""
        response_format = body.get("response_format") or {}
        json_schema = response_format.get("json_schema") or {}
        if model["id"].startswith("openai/") and response_format.get("type") == "json_schema" \
                and json_schema.get("strict") and isinstance(json_schema.get("schema"), dict):
            problem = strict_schema_problem(json_schema["schema"])
            if problem:
                name = json_schema.get("name", "default")
                return self.provider_error(provider_name(model["id"]),
                                           f"Invalid schema for response_format '{name}': {problem}",
                                           param="response_format")
        if self.fault(self.o.fail_400, model):
            return self.provider_error(provider_name(model["id"]), "The request was rejected by the provider.")
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        arrived, received_at = time.monotonic(), time.time()
        self.connections.add(request.transport.get_extra_info("peername") if request.transport else None)
        if not self.authorized(request):
            self.count("401")
            return self.error(401, "No auth credentials found" if "Authorization" not in request.headers
                              else "User not found.")
        try:
            body = await request.json()
            model, router = self._route(body["model"])
            messages = body["messages"]
            assert isinstance(messages, list) and messages
        except (ValueError, KeyError, TypeError, AssertionError):
            self.count("400")
            return self.error(400, "Invalid request: a JSON body with model and messages is required")
        self.chats += 1
        self.log_request(body, received_at)
        if model is None:
            self.count("400")
            return self.error(400, f"{body['model']} is not a valid model ID")
        if self.o.credits is not None and self.total_usage >= self.o.credits:
            self.count("402")
            return self.error(402, "Insufficient credits. Add more using https://openrouter.ai/credits")
        if self.fault(self.o.fail_429, model) or self.chats == self.o.fail_429_request:
            self.count("429")
            return self.error(429, "Rate limit exceeded", {"Retry-After": f"{self.o.retry_after:g}"})
        if self.fault(self.o.fail_500, model):
            self.count("500")
            return self.error(500, "Internal Server Error")
        if self.fault(self.o.fail_timeout, model):
            self.count("timeout")
            for _ in range(6000):  # say nothing until the client gives up
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.1)
            return self.error(504, "Upstream timed out")
        refused = self.refusal(model, body)
        if refused is not None:
            self.count("400")
            return refused
        answer = self.answer(model, body)
        gen = self.new_generation(model, messages, router)
        self.count({"midstream": "midstream", "choice": "choice_error"}.get(answer.failure, "ok"))
        if body.get("stream"):
            return await self.stream(request, gen, answer, arrived)
        await self.pause(arrived)
        return self.whole(gen, answer)

    def answer(self, model: dict, body: dict) -> Answer:
        """The answer, with the faults drawn for it (the draws in the order they always had)."""
        midstream = self.fault(self.o.fail_midstream, model)
        malformed = self.fault(self.o.fail_malformed, model)
        # drawn after the others, so that a seed's draws for them stay what they were
        unfaithful = next((kind for kind, rate in (("invent", self.o.fail_invent), ("truncate", self.o.fail_truncate))
                           if self.fault(rate, model)), None)
        content = answer_for(body["messages"], body.get("response_format"), malformed, unfaithful)
        answer = self.plan(model, content, int(body.get("max_tokens") or 16384))
        if midstream:
            return Answer("", 0, "error", "midstream")
        if self.fault(self.o.fail_choice_error, model):  # the provider breaks off halfway: that half is billed
            return Answer(answer.content[: len(answer.content) // 2], answer.reasoning, "error", "choice")
        return answer

    def whole(self, gen: Generation, answer: Answer) -> web.Response:
        """A non-streamed answer: generated, then billed, then sent."""
        self.charge(gen, answer.completion, answer.reasoning,
                    "complete" if answer.failure is None else "error", answer.finish)
        choice = {"index": 0, "finish_reason": answer.finish, "native_finish_reason": answer.finish,
                  "logprobs": None, "message": {"role": "assistant", "content": answer.content}}
        if answer.failure == "choice":
            choice["error"] = CHOICE_ERROR
        body = {"id": gen.id, "provider": gen.provider, "model": gen.model, "object": "chat.completion",
                "created": int(gen.created), "choices": [choice], "usage": self.usage(gen)}
        if answer.failure == "midstream":
            body["error"] = {"code": 502, "message": "Provider returned error during generation"}
        return web.json_response(body, headers={"X-Generation-Id": gen.id})

    async def stream(self, request, gen: Generation, answer: Answer, arrived: float) -> web.StreamResponse:
        gen.streamed = True
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Generation-Id": gen.id})
        wire, chunks = Wire(request, response), Chunks(gen)
        parts = pieces(answer.content, self.o.chunk_tokens)
        sent = 0  # completion tokens written so far: what a cut is billed for
        try:
            await wire.start()
            await self.processing(wire)
            await wire.data(chunks.content(""))  # the first data chunk: role, no content yet
            await self.pause(arrived)
            if answer.failure == "midstream":
                self.charge(gen, 0, 0, "error", "error")
                await wire.data(chunks.event({
                    "error": {"code": 502, "message": "Provider returned error during generation"},
                    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
                    "usage": self.usage(gen)}))
            else:
                done = 0
                for i, piece in enumerate(parts):
                    if i and self.o.stream_ms:
                        await asyncio.sleep(self.o.stream_ms / 1000)
                    await wire.data(chunks.content(piece))
                    done += len(piece)
                    sent = answer.reasoning + tokens(answer.content[:done])
                await self.end(wire, chunks, gen, answer)
            await wire.done()
        except (ConnectionError, asyncio.CancelledError) as e:
            if gen.ended is None:
                await self.cut(wire, gen, answer, parts, sent, arrived, shutdown=isinstance(e, asyncio.CancelledError))
        return response

    async def processing(self, wire: Wire) -> None:
        """OpenRouter keeps a stream open with SSE comments until the provider answers: one at
        once (chat_stream_gpt4o_usage.sse), then one every 0.1 s for --processing-ms."""
        await wire.comment()
        end = time.monotonic() + self.o.processing_ms / 1000
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(PROCESSING_EVERY_S, left))
            await wire.comment()

    async def end(self, wire: Wire, chunks: Chunks, gen: Generation, answer: Answer) -> None:
        """Billed first, so that a cut after the last content chunk is billed in full; then the
        finish chunk (or the choice-level error) and, last, the usage with its cost."""
        self.charge(gen, answer.completion, answer.reasoning,
                    "complete" if answer.failure is None else "error", answer.finish)
        if answer.failure == "choice":
            await wire.data(chunks.event({"error": CHOICE_ERROR, "choices": [{
                "index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "error",
                "native_finish_reason": "error", "error": CHOICE_ERROR}]}))
        else:
            await wire.data(chunks.finish(answer.finish))
        await wire.data(chunks.usage(self.usage(gen)))

    async def cut(self, wire: Wire, gen: Generation, answer: Answer, parts: list[str], sent: int,
                  arrived: float, shutdown: bool) -> None:
        """The client left (or the server is stopping) before the generation was billed."""
        if wire.headers_sent and not wire.data_sent and self.o.bill_abandoned and not shutdown:
            # the provider never heard of the cut: it generates to the end, and bills all of it
            gen.abandoned = True
            await self.pause(arrived)
            if self.o.stream_ms and answer.failure != "midstream":
                await asyncio.sleep(self.o.stream_ms / 1000 * (len(parts) - 1))
            if answer.failure == "midstream":
                self.charge(gen, 0, 0, "error", "error")
            else:
                self.charge(gen, answer.completion, answer.reasoning,
                            "complete" if answer.failure is None else "error", answer.finish)
        elif sent:
            self.charge(gen, sent, answer.reasoning, "cut", "cancelled")
        else:
            self.charge(gen, 0, 0, "cancelled", "cancelled")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get(f"{API}/models", self.models)
        app.router.add_post(f"{API}/chat/completions", self.chat)
        app.router.add_get(f"{API}/generation", self.generation)
        app.router.add_get(f"{API}/credits", self.credits)
        app.router.add_get(f"{API}/key", self.key)
        app.router.add_get(f"{API}/sim/generations", self.sim_generations)
        return app


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


FAULTS = (("429", "answer 429 with Retry-After"), ("500", "answer 500"),
          ("timeout", "send nothing, hang until the client gives up"),
          ("malformed", "answer invalid JSON for the schema (billed)"),
          ("midstream", "HTTP 200 with an error body, prompt billed"),
          ("400", "HTTP 400 'Provider returned error', the provider's body in metadata.raw (not billed)"),
          ("choice-error", "break off halfway: a choice with finish_reason 'error' (the half billed)"),
          ("invent", "answer a correction with a paragraph of its own making added (an unfaithful model)"),
          ("truncate", "answer a correction without the last 40%% of the page's lines (an unfaithful model)"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="openrouter_sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback only (127.0.0.0/8, ::1, localhost)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--latency-ms", type=float, default=0, help="time before the first content token")
    p.add_argument("--jitter-ms", type=float, default=0, help="random extra latency, 0..this")
    p.add_argument("--stream-ms", type=float, default=0, help="time between streamed content chunks")
    p.add_argument("--processing-ms", type=float, default=0,
                   help="after a stream's headers, ': OPENROUTER PROCESSING' comments this long (one every "
                        "0.1 s) before its first data chunk; counts within --latency-ms")
    p.add_argument("--chunk-tokens", type=int, default=0,
                   help="tokens (4 characters) per streamed content chunk; 0: at most 4 chunks an answer")
    p.add_argument("--reasoning-tokens", type=int,
                   help="reasoning tokens of a reasoning model's answer, counted against max_tokens "
                        "(default: about a quarter of the answer, at most max_tokens/4)")
    # Off by default: a client that takes the generation id from the first data chunk only
    # (infra/llm_client.py on this branch) cannot know of a generation billed this way, and the
    # SIGKILL torture test caught one (a kill between the headers and the first data chunk).
    p.add_argument("--bill-abandoned", action=argparse.BooleanOptionalAction, default=False,
                   help="a stream left after its headers, before its first data chunk, is generated "
                        "and billed in full (Google); default, --no-bill-abandoned: not billed")
    p.add_argument("--auto-router", action="store_true",
                   help="list openrouter/auto at price '-1' (variable); it answers as "
                        f"{AUTO_ROUTES_TO}, at that model's price")
    p.add_argument("--byok", action="store_true",
                   help="bring your own key: the provider bills the upstream cost to the user's key; "
                        "the usage's cost (and /credits) is OpenRouter's fee")
    p.add_argument("--byok-fee", type=float, default=0.05, help="OpenRouter's BYOK fee, a fraction of the upstream cost")
    p.add_argument("--seed", type=int, help="seed of the fault and jitter draws")
    for fault, what in FAULTS:
        p.add_argument(f"--fail-{fault}", type=float, default=0, metavar="RATE", help=f"rate (0..1): {what}")
    p.add_argument("--faults-model", metavar="MODEL",
                   help="the --fail-* faults hit only requests to this model (default: every model)")
    p.add_argument("--retry-after", type=float, default=1, help="seconds in the Retry-After of a 429")
    p.add_argument("--fail-429-request", type=int, metavar="N",
                   help="answer the Nth chat request (counting from 1) 429 with Retry-After, and only it")
    p.add_argument("--credits", type=float, help="USD available; once billed, answers 402")
    p.add_argument("--api-key", help="the only key accepted (default: any non-empty key)")
    p.add_argument("--generation-delay-ms", type=float, default=300,
                   help="/generation answers 404 this long after a generation ends")
    p.add_argument("--log-requests", metavar="FILE",
                   help="append each chat request's body to FILE as a JSON line (images as their size)")
    p.add_argument("--state", metavar="FILE",
                   help="journal of generations and billing, kept across restarts of the server")
    args = p.parse_args(argv)
    if not _loopback(args.host):
        p.exit(2, f"openrouter_sim: error: --host {args.host} is not a loopback address; "
                  "this server binds 127.0.0.1 only\n")
    for fault, _ in FAULTS:
        if not 0 <= getattr(args, f"fail_{fault.replace('-', '_')}") <= 1:
            p.exit(2, f"openrouter_sim: error: --fail-{fault} must be between 0 and 1\n")
    return args


async def serve(args: argparse.Namespace) -> None:
    options = Options(**{k: v for k, v in vars(args).items() if k in Options.__dataclass_fields__})
    simulator = Simulator(options)
    if options.state:
        simulator.replay(options.state)
    runner = web.AppRunner(simulator.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"listening on http://{host}:{port}{API}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except OSError as e:
        print(f"openrouter_sim: error: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
