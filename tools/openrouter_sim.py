"""A local OpenRouter-compatible server, for the demo, the tests and fault and load testing.

It stands in for OpenRouter the way stripe-mock stands in for Stripe: the same HTTP shapes
(`/models`, `/chat/completions` streamed or whole, `/generation`, `/credits`), and it bills
as the real service does:
- a whole (non-streamed) answer is billed once generated, even if the client has gone;
- a stream is billed from its first content chunk on: cut by the client, it is billed for
  the prompt and the tokens sent until the cut (`/generation` says so, cancelled);
- a request cut before any content was sent is not billed; nor are 4xx/5xx answers.
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
    {"id": "anthropic/claude-sonnet-4.5", "name": "Anthropic: Claude Sonnet 4.5", "context_length": 1000000,
     "modalities": ["text", "image"],
     "pricing": {"prompt": "0.000003", "completion": "0.000015", "request": "0", "image": "0.0048",
                 "input_cache_read": "0.0000003", "input_cache_write": "0.00000375",
                 "internal_reasoning": "0", "web_search": "0.01"}},
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


def _price(model: dict, key: str) -> float | None:
    value = model["pricing"].get(key)
    return None if value is None else float(value)


def bill(model: dict, prompt: int, cached: int, cache_write: int, completion: int, reasoning: int,
         images: int) -> float:
    """What the provider charges. Written apart from ar's own CostCalculator on purpose."""
    p = _price(model, "prompt")
    read = _price(model, "input_cache_read")
    write = _price(model, "input_cache_write")
    think = _price(model, "internal_reasoning") or 0.0
    c = _price(model, "completion")
    usd = (prompt - cached - cache_write) * p
    usd += cached * (p if read is None else read)
    usd += cache_write * (p if write is None else write)
    usd += (completion - reasoning) * c + reasoning * (think if think > 0 else c)
    usd += images * (_price(model, "image") or 0.0) + (_price(model, "request") or 0.0)
    return usd * (1 - float(model["pricing"].get("discount", 0)))


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
        speller = _speller()
        best = max(candidates, key=lambda w: (speller.word_usage_frequency(w), w))
        return _recase(best, word)
    split = _split_in_two(lower)
    if split:  # OCR lost the space between two words: "nota" -> "not a"
        return _recase(split, word)
    if any(ch.isdigit() for ch in word):
        return word
    guess = _speller().correction(lower)
    return _recase(guess, word) if guess else word


def _split_in_two(word: str) -> str | None:
    """Two known words whose concatenation is `word`, the likeliest pair; None if none."""
    speller = _speller()
    pairs = [(word[:i], word[i:]) for i in range(1, len(word))
             if (len(word[:i]) > 1 or word[:i] in "ai") and (len(word[i:]) > 1 or word[i:] in "ai")
             and _known(word[:i]) and _known(word[i:])]
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


def _images(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if p.get("type") == "image_url")


def answer_for(messages: list[dict], response_format: dict | None, malformed: bool) -> str:
    # The latest user message with a page in it: a re-ask after an invalid answer ("That answer
    # is not valid...") comes after it, and a model answers it about the same page.
    texts = (_message_text(m) for m in reversed(messages) if m.get("role") == "user")
    found = next(filter(None, (re.search(r"<ocr_text>\n?(.*?)\n?</ocr_text>", t, re.S) for t in texts)), None)
    corrected, changes, words = correct_text(found.group(1)) if found else (
        "This is the local OpenRouter-compatible server.", [], 0)
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
    stream_ms: float = 0
    retry_after: float = 1
    credits: float | None = None
    api_key: str | None = None
    generation_delay_ms: float = 300
    state: str | None = None


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
    cost: float = 0.0
    status: str = "running"  # running | complete | cut | cancelled | error
    finish_reason: str | None = None
    streamed: bool = False
    created: float = field(default_factory=time.time)
    ended: float | None = None


class Simulator:
    _journal = None  # the --state file, appended to once replayed

    def __init__(self, options: Options):
        self.o = options
        self.rng = random.Random(options.seed)
        self.generations: dict[str, Generation] = {}
        self.total_usage = 0.0
        self.requests: dict[str, int] = {}
        self.seen_prompts: set[tuple[str, str]] = set()
        self.connections: set[tuple] = set()  # client (host, port) pairs: one per TCP connection

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
            self.total_usage += gen.cost
        self._journal = open(path, "a", encoding="utf-8")

    def _record(self, gen: Generation) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps(gen.__dict__) + "\n")
            self._journal.flush()  # in the kernel's hands: survives the server's SIGKILL

    def count(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def charge(self, gen: Generation, completion: int, reasoning: int, status: str, reason: str | None) -> None:
        gen.completion, gen.reasoning = completion, reasoning
        gen.cost = bill(BY_ID[gen.model], gen.prompt, gen.cached, gen.cache_write, completion, reasoning,
                        gen.images) if status != "cancelled" else 0.0
        gen.status, gen.finish_reason, gen.ended = status, reason, time.monotonic()
        self.total_usage += gen.cost
        self._record(gen)

    def usage(self, gen: Generation) -> dict:
        return {"prompt_tokens": gen.prompt, "completion_tokens": gen.completion,
                "total_tokens": gen.prompt + gen.completion,
                "prompt_tokens_details": {"cached_tokens": gen.cached, "cache_write_tokens": gen.cache_write},
                "completion_tokens_details": {"reasoning_tokens": gen.reasoning}, "cost": gen.cost}

    # -- helpers --

    @staticmethod
    def error(status: int, message: str, headers: dict | None = None) -> web.Response:
        return web.json_response({"error": {"code": status, "message": message, "metadata": {}}},
                                 status=status, headers=headers)

    def authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return False
        return self.o.api_key is None or auth[7:] == self.o.api_key

    async def pause(self, arrived: float) -> None:
        """Until the latency has passed since the request arrived: a provider's latency is the
        time to its first token, its own work on the request included."""
        delay = self.o.latency_ms + (self.rng.uniform(0, self.o.jitter_ms) if self.o.jitter_ms else 0)
        left = delay / 1000 - (time.monotonic() - arrived)
        if left > 0:
            await asyncio.sleep(left)

    def new_generation(self, model: dict, messages: list[dict]) -> Generation:
        prompt = sum(tokens(_message_text(m)) for m in messages)
        system = "\n".join(_message_text(m) for m in messages if m.get("role") == "system")
        cached = cache_write = 0
        if system:
            key = (model["id"], system)
            if key in self.seen_prompts and _price(model, "input_cache_read") is not None:
                cached = tokens(system)
            elif key not in self.seen_prompts and _price(model, "input_cache_write") is not None:
                cache_write = tokens(system)
            self.seen_prompts.add(key)
        gen = Generation(id=f"gen-{secrets.token_hex(12)}", model=model["id"], prompt=prompt,
                         cached=cached, cache_write=cache_write, images=_images(messages))
        self.generations[gen.id] = gen
        self._record(gen)
        return gen

    # -- endpoints --

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m["id"], "name": m["name"], "context_length": m["context_length"],
                 "architecture": {"input_modalities": m["modalities"], "output_modalities": ["text"]},
                 "pricing": m["pricing"]} for m in MODELS]
        return web.json_response({"data": data})

    async def credits(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.error(401, "No auth credentials found")
        total = self.o.credits if self.o.credits is not None else 1e9
        return web.json_response({"data": {"total_credits": total, "total_usage": self.total_usage}})

    async def generation(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.error(401, "No auth credentials found")
        gen = self.generations.get(request.query.get("id", ""))
        if gen is None or gen.ended is None or \
                time.monotonic() < gen.ended + self.o.generation_delay_ms / 1000:
            return self.error(404, f"Generation {request.query.get('id')} not found")
        return web.json_response({"data": {
            "id": gen.id, "model": gen.model, "total_cost": gen.cost, "usage": gen.cost,
            "tokens_prompt": gen.prompt, "tokens_completion": gen.completion,
            "native_tokens_prompt": gen.prompt, "native_tokens_completion": gen.completion,
            "native_tokens_reasoning": gen.reasoning, "native_tokens_cached": gen.cached,
            "num_media_prompt": gen.images, "streamed": gen.streamed,
            "cancelled": gen.status in ("cut", "cancelled"), "finish_reason": gen.finish_reason,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(gen.created))}})

    async def sim_generations(self, request: web.Request) -> web.Response:
        data = [{"id": g.id, "model": g.model, "cost": g.cost, "status": g.status,
                 "prompt_tokens": g.prompt, "completion_tokens": g.completion}
                for g in self.generations.values()]
        return web.json_response({"data": data, "requests": self.requests, "total_usage": self.total_usage,
                                  "connections": len(self.connections)})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        self.connections.add(request.transport.get_extra_info("peername") if request.transport else None)
        if not self.authorized(request):
            self.count("401")
            return self.error(401, "No auth credentials found" if "Authorization" not in request.headers
                              else "User not found.")
        try:
            body = await request.json()
            model = BY_ID.get(body["model"])
            messages = body["messages"]
            assert isinstance(messages, list) and messages
        except (ValueError, KeyError, TypeError, AssertionError):
            self.count("400")
            return self.error(400, "Invalid request: a JSON body with model and messages is required")
        if model is None:
            self.count("400")
            return self.error(400, f"{body['model']} is not a valid model ID")
        if self.o.credits is not None and self.total_usage >= self.o.credits:
            self.count("402")
            return self.error(402, "Insufficient credits. Add more using https://openrouter.ai/credits")
        if self.roll(self.o.fail_429):
            self.count("429")
            return self.error(429, "Rate limit exceeded", {"Retry-After": f"{self.o.retry_after:g}"})
        if self.roll(self.o.fail_500):
            self.count("500")
            return self.error(500, "Internal Server Error")
        if self.roll(self.o.fail_timeout):
            self.count("timeout")
            for _ in range(6000):  # say nothing until the client gives up
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.1)
            return self.error(504, "Upstream timed out")
        midstream = self.roll(self.o.fail_midstream)
        content = answer_for(messages, body.get("response_format"), self.roll(self.o.fail_malformed))
        max_tokens = int(body.get("max_tokens") or 16384)
        reasoning = min(64 + tokens(content) // 4, max_tokens // 4) if model.get("reasoning") else 0
        room = max_tokens - reasoning
        finish = "stop"
        if tokens(content) > room:
            content, finish = content[: room * 4], "length"
        gen = self.new_generation(model, messages)
        if midstream:
            content, reasoning, finish = "", 0, "error"
        self.count("midstream" if midstream else "ok")
        if body.get("stream"):
            return await self.stream(request, gen, content, reasoning, finish, arrived)
        await self.pause(arrived)
        self.charge(gen, tokens(content) + reasoning, reasoning, "error" if midstream else "complete", finish)
        answer = {"id": gen.id, "object": "chat.completion", "created": int(gen.created), "model": gen.model,
                  "provider": "Local", "choices": [{"index": 0, "finish_reason": finish,
                                                    "message": {"role": "assistant", "content": content}}],
                  "usage": self.usage(gen)}
        if midstream:
            answer["error"] = {"code": 502, "message": "Provider returned error during generation"}
        return web.json_response(answer)

    async def stream(self, request, gen: Generation, content: str, reasoning: int, finish: str, arrived: float):
        gen.streamed = True
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        base = {"id": gen.id, "object": "chat.completion.chunk", "created": int(gen.created),
                "model": gen.model, "provider": "Local"}

        def event(payload: dict) -> bytes:
            return b"data: " + json.dumps({**base, **payload}).encode() + b"\n\n"

        sent = 0  # completion tokens written so far: what a cut is billed for
        try:
            await response.prepare(request)
            await response.write(event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                     "finish_reason": None}]}))
            await self.pause(arrived)
            if finish == "error":
                self.charge(gen, 0, 0, "error", "error")
                await self._write(request, response, event({
                    "error": {"code": 502, "message": "Provider returned error during generation"},
                    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
                    "usage": self.usage(gen)}))
            else:
                pieces = max(1, min(4, len(content) // 64))
                size = math.ceil(len(content) / pieces) if content else 0
                for i in range(pieces):
                    piece = content[i * size:(i + 1) * size]
                    if i and self.o.stream_ms:
                        await asyncio.sleep(self.o.stream_ms / 1000)
                    await self._write(request, response, event(
                        {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}))
                    sent = reasoning + tokens(content[:(i + 1) * size])
                self.charge(gen, tokens(content) + reasoning, reasoning, "complete", finish)
                await self._write(request, response, event({
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": self.usage(gen)}))
            await self._write(request, response, b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            if gen.ended is None:  # cut by the client: bill what was sent (nothing: cancelled)
                if sent:
                    self.charge(gen, sent, reasoning, "cut", "cancelled")
                else:
                    self.charge(gen, 0, 0, "cancelled", "cancelled")
        return response

    @staticmethod
    async def _write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("client went away")
        await response.write(data)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get(f"{API}/models", self.models)
        app.router.add_post(f"{API}/chat/completions", self.chat)
        app.router.add_get(f"{API}/generation", self.generation)
        app.router.add_get(f"{API}/credits", self.credits)
        app.router.add_get(f"{API}/sim/generations", self.sim_generations)
        return app


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="openrouter_sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback only (127.0.0.0/8, ::1, localhost)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--latency-ms", type=float, default=0, help="time before the first content token")
    p.add_argument("--jitter-ms", type=float, default=0, help="random extra latency, 0..this")
    p.add_argument("--stream-ms", type=float, default=0, help="time between streamed content chunks")
    p.add_argument("--seed", type=int, help="seed of the fault and jitter draws")
    for fault, what in (("429", "answer 429 with Retry-After"), ("500", "answer 500"),
                        ("timeout", "send nothing, hang until the client gives up"),
                        ("malformed", "answer invalid JSON for the schema (billed)"),
                        ("midstream", "HTTP 200 with an error body, prompt billed")):
        p.add_argument(f"--fail-{fault}", type=float, default=0, metavar="RATE", help=f"rate (0..1): {what}")
    p.add_argument("--retry-after", type=float, default=1, help="seconds in the Retry-After of a 429")
    p.add_argument("--credits", type=float, help="USD available; once billed, answers 402")
    p.add_argument("--api-key", help="the only key accepted (default: any non-empty key)")
    p.add_argument("--generation-delay-ms", type=float, default=300,
                   help="/generation answers 404 this long after a generation ends")
    p.add_argument("--state", metavar="FILE",
                   help="journal of generations and billing, kept across restarts of the server")
    args = p.parse_args(argv)
    if not _loopback(args.host):
        p.exit(2, f"openrouter_sim: error: --host {args.host} is not a loopback address; "
                  "this server binds 127.0.0.1 only\n")
    for name in ("fail_429", "fail_500", "fail_timeout", "fail_malformed", "fail_midstream"):
        if not 0 <= getattr(args, name) <= 1:
            p.exit(2, f"openrouter_sim: error: --{name.replace('_', '-')} must be between 0 and 1\n")
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
