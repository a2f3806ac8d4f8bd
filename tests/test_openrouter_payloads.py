"""LLMClient on real OpenRouter bytes (tests/fixtures/openrouter/, README there), served by
httpx.MockTransport: streams, cuts, error bodies, finish reasons, and what the client sends."""
import asyncio
import json
import time
from datetime import date

import httpx
import pytest
from pydantic import BaseModel, Field, SecretStr, ValidationError

from infra.budget import Budget
from infra.errors import FatalLLMError, InvalidAnswer, LLMError, RetryableError, TruncatedAnswer
from infra.llm_client import MAX_TOKENS_CAP, LLMClient, strict_schema
from infra.pricing import BYOK_FEE_BOUND, ModelPrice, PricingCache
from pipeline.correct import CorrectedPage
from pipeline.llm_stage import LedgerRecorder
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "openrouter"
BASE = "https://openrouter.test/api/v1"
KEY = "sk-or-v1-payload-test-0123456789abcdef"
GPT4O = "openai/gpt-4o"
MINIMAX = "minimax/minimax-m2:free"
GPT4O_ID = "gen-1754441342-hIkMo7SMi0ZecQw3oR4d"
HEADER_ID = "gen-1785882264-Dc8eXAHSnjmKOswYtXdR"  # as in responses_stream_x_generation_id.headers.txt
MESSAGES = [{"role": "user", "content": "Name two pets."}]
UNSTRICT = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
            "pattern", "format"}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def recorded_headers(name: str) -> dict[str, str]:
    """A headers.txt: its first line is the status line, then `Name: value` lines."""
    lines = (FIXTURES / name).read_text().splitlines()[1:]
    return dict(line.split(": ", 1) for line in lines if line.strip())


GPT4O_STREAM = fixture("chat_stream_gpt4o_usage.sse")
GPT4O_HEADERS = recorded_headers("chat_stream_gpt4o_usage.headers.txt")
SSE = {"Content-Type": "text/event-stream"}
GENERATION = json.loads(fixture("generation_doc_example.json"))


class CutStream(httpx.AsyncByteStream):
    """Sends `data`, waits for `go` (if any), then the connection breaks."""

    def __init__(self, data: bytes, go: asyncio.Event | None = None):
        self.data, self.go = data, go

    async def __aiter__(self):
        yield self.data
        if self.go is not None:
            await self.go.wait()
        raise httpx.ReadError("connection reset by peer")


class FakeOpenRouter:
    """Answers each POST /chat/completions with the next of `answers` (functions making a
    response), and GET /generation with `generation` (None: 404, not known yet)."""

    def __init__(self, *answers, generation: dict | None = None):
        self.answers = list(answers)
        self.generation = generation
        self.sent: list[dict] = []
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            self.sent.append(json.loads(request.content))
            return self.answers.pop(0)()
        if request.url.path.endswith("/generation"):
            self.asked.append(request.url.params["id"])
            if self.generation is None:
                return httpx.Response(404, json={"error": {"message": "Generation not found", "code": 404}})
            return httpx.Response(200, json={"data": {**self.generation["data"], "id": request.url.params["id"]}})
        return httpx.Response(404)


def stream(body: bytes = GPT4O_STREAM, headers: dict | None = None):
    return lambda: httpx.Response(200, headers=GPT4O_HEADERS if headers is None else headers, content=body)


def error(name: str, status: int, headers: dict | None = None):
    return lambda: httpx.Response(status, headers={"Content-Type": "application/json", **(headers or {})},
                                  content=fixture(name))


def pricing(tmp_path) -> PricingCache:
    """The recorded /models prices (2025-08), and a price for the minimax model (free in the
    recording; priced here so that a budget's worst case depends on max_tokens)."""
    cache = PricingCache(BASE, cache_dir=tmp_path / "cache")
    entries = json.loads(fixture("models_subset_2025-08.json"))["data"]
    prices = {m["id"]: ModelPrice.from_openrouter(m["pricing"]).model_dump() for m in entries}
    prices[MINIMAX] = ModelPrice(prompt=3e-7, completion=1.2e-6).model_dump()
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_text(json.dumps({"base_url": BASE, "fetched_at": time.time(), "models": prices}))
    return cache


def client_for(tmp_path, fake, **kw) -> LLMClient:
    kw.setdefault("backoff_cap", 0.01)
    kw.setdefault("resolve_timeout", 2.0)
    return LLMClient(BASE, SecretStr(KEY), pricing(tmp_path), transport=httpx.MockTransport(fake), **kw)


def ask(client, ledger, model=GPT4O, schema=None, max_tokens=4096):
    return client.call(model, MESSAGES, LedgerRecorder(ledger, ledger.run, "correct", 1), schema=schema,
                       max_tokens=max_tokens)


def go(client, coro_fn):
    async def main():
        try:
            return await coro_fn()
        finally:
            await client.aclose()  # waits for calls being settled through /generation
    return asyncio.run(main())


def calls(ledger):
    return ledger._db.execute(
        "SELECT status, generation_id, computed_cost_usd, provider_cost_usd, error FROM calls ORDER BY call_id"
    ).fetchall()


# ---- a whole stream ------------------------------------------------------------------

def test_a_recorded_stream_gives_its_text_usage_and_cost(ledger, tmp_path):
    assert "X-Generation-Id" not in GPT4O_HEADERS  # as recorded: the id comes in the chunks only
    fake = FakeOpenRouter(stream())
    client = client_for(tmp_path, fake)
    result = go(client, lambda: ask(client, ledger))
    assert result.response == "Pebbles and Skipper."
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (17, 6)
    assert result.cost == 0.0001025  # the usage chunk's `cost`
    [(status, gen_id, computed, provider, err)] = calls(ledger)
    assert (status, gen_id, provider, err) == ("ok", GPT4O_ID, 0.0001025, None)
    assert computed == pytest.approx(0.0001025, rel=1e-9)  # 17 x $2.5/M + 6 x $10/M
    assert ledger.total_cost() == 0.0001025


# ---- cut before the first data chunk -----------------------------------------------------

def first_data_offset(body: bytes) -> int:
    return body.index(b"data:")


def test_a_stream_cut_before_its_first_chunk_is_settled_by_the_id_of_its_header(ledger, tmp_path):
    """Headers with X-Generation-Id, then the `: OPENROUTER PROCESSING` comment, then the
    connection breaks: the id is in the ledger before any chunk, and the attempt is settled
    from /generation, not recorded as "failed, no id, $0"."""
    go_on = asyncio.Event()
    comments = GPT4O_STREAM[:first_data_offset(GPT4O_STREAM)]
    assert comments.strip() == b": OPENROUTER PROCESSING"
    headers = {**GPT4O_HEADERS, "X-Generation-Id": HEADER_ID}
    fake = FakeOpenRouter(lambda: httpx.Response(200, headers=headers, stream=CutStream(comments, go_on)),
                          stream(), generation=GENERATION)
    client = client_for(tmp_path, fake)
    seen = []

    async def scenario():
        task = asyncio.create_task(ask(client, ledger))
        for _ in range(200):
            await asyncio.sleep(0.01)
            seen.extend(p.generation_id for p in ledger.pending_calls() if p.generation_id)
            if seen:
                break
        go_on.set()
        return await task

    result = go(client, scenario)
    assert seen == [HEADER_ID]  # pending with the header's id, while no chunk had come
    assert result.response == "Pebbles and Skipper."
    first, second = calls(ledger)
    assert first[:2] == ("failed", HEADER_ID) and first[3] == GENERATION["data"]["total_cost"]
    assert "ReadError" in first[4]
    assert second[:2] == ("ok", GPT4O_ID)
    assert fake.asked == [HEADER_ID]
    assert ledger.total_cost() == pytest.approx(GENERATION["data"]["total_cost"] + 0.0001025, abs=1e-12)


def test_a_cut_whose_generation_is_not_known_yet_stays_pending_for_the_next_run(ledger, tmp_path):
    comments = GPT4O_STREAM[:first_data_offset(GPT4O_STREAM)]
    headers = {**GPT4O_HEADERS, "X-Generation-Id": HEADER_ID}
    fake = FakeOpenRouter(lambda: httpx.Response(200, headers=headers, stream=CutStream(comments)),
                          stream(), generation=None)
    client = client_for(tmp_path, fake, resolve_timeout=0.3)
    go(client, lambda: ask(client, ledger))
    assert [(p.generation_id, p.model) for p in ledger.pending_calls()] == [(HEADER_ID, GPT4O)]
    assert [r[0] for r in calls(ledger)] == ["pending", "ok"]


def test_a_cut_before_any_id_is_not_billed(ledger, tmp_path):
    """As recorded (no X-Generation-Id on /chat/completions): nothing names the generation."""
    comments = fixture("chat_stream_minimax_length_then_error.sse")
    comments = comments[:first_data_offset(comments)]
    assert comments.count(b": OPENROUTER PROCESSING") == 17
    fake = FakeOpenRouter(lambda: httpx.Response(200, headers=GPT4O_HEADERS, stream=CutStream(comments)), stream())
    client = client_for(tmp_path, fake)
    go(client, lambda: ask(client, ledger))
    first, second = calls(ledger)
    assert first[:4] == ("failed", None, 0.0, None) and second[0] == "ok"
    assert fake.asked == []


# ---- finish_reason length / error --------------------------------------------------------

MINIMAX_STREAM = fixture("chat_stream_minimax_length_then_error.sse")


class Reservations(Budget):
    def __init__(self):
        super().__init__(100.0, 0.0)
        self.seen: list[float] = []

    async def reserve(self, worst_case_usd: float) -> float:
        self.seen.append(worst_case_usd)
        return await super().reserve(worst_case_usd)


def test_an_answer_cut_at_max_tokens_is_asked_once_more_with_more_room_then_flagged(ledger, tmp_path):
    """minimax: reasoning ate the 10 tokens (`length`), then an error chunk with the usage. Not
    the same request again: twice the room, the budget reserving that; cut again: TruncatedAnswer."""
    fake = FakeOpenRouter(stream(MINIMAX_STREAM, SSE), stream(MINIMAX_STREAM, SSE))
    client = client_for(tmp_path, fake)
    client.budget = budget = Reservations()
    with pytest.raises(TruncatedAnswer, match="max_tokens=20") as err:
        go(client, lambda: ask(client, ledger, model=MINIMAX, max_tokens=10))
    assert isinstance(err.value, InvalidAnswer)  # the stages flag the page, as for an invalid answer
    assert [body["max_tokens"] for body in fake.sent] == [10, 20]
    assert budget.seen[1] == pytest.approx(budget.seen[0] + 10 * 1.2e-6 * BYOK_FEE_BOUND)  # the larger worst case
    rows = calls(ledger)
    assert [r[0] for r in rows] == ["failed", "failed"]  # billed (as the usage says: $0) and recorded
    assert all(r[1] == "gen-1762179802-UN8pkJI4AGZvryk0kFnb" and r[3] == 0 for r in rows)
    assert "from Minimax: Token limit reached" in rows[0][4]
    assert budget.holding == 0 and budget.spent == 0


def test_an_answer_cut_at_max_tokens_then_whole_is_the_answer(ledger, tmp_path):
    fake = FakeOpenRouter(stream(MINIMAX_STREAM, SSE), stream())
    client = client_for(tmp_path, fake)
    result = go(client, lambda: ask(client, ledger, max_tokens=3000))
    assert result.response == "Pebbles and Skipper." and result.cost == 0.0001025
    assert [body["max_tokens"] for body in fake.sent] == [3000, 6000]
    assert [r[0] for r in calls(ledger)] == ["failed", "ok"]


def test_no_more_room_than_the_cap(ledger, tmp_path):
    fake = FakeOpenRouter(stream(MINIMAX_STREAM, SSE), stream(MINIMAX_STREAM, SSE))
    client = client_for(tmp_path, fake)
    with pytest.raises(TruncatedAnswer):
        go(client, lambda: ask(client, ledger, model=MINIMAX, max_tokens=20000))
    assert [body["max_tokens"] for body in fake.sent] == [20000, MAX_TOKENS_CAP]
    fake = FakeOpenRouter(stream(MINIMAX_STREAM, SSE))
    client = client_for(tmp_path, fake)
    with pytest.raises(TruncatedAnswer):
        go(client, lambda: ask(client, ledger, model=MINIMAX, max_tokens=MAX_TOKENS_CAP))
    assert len(fake.sent) == 1


def test_a_midstream_error_without_usage_is_settled_by_its_id_and_retried(ledger, tmp_path):
    """The streaming doc's error event: top-level `error`, `finish_reason: "error"`, no usage."""
    fake = FakeOpenRouter(stream(fixture("stream_midstream_error_doc.sse"), SSE), stream(), generation=GENERATION)
    client = client_for(tmp_path, fake)
    result = go(client, lambda: ask(client, ledger))
    assert result.response == "Pebbles and Skipper."
    first, second = calls(ledger)
    assert first[:2] == ("failed", "cmpl-abc123") and first[3] == GENERATION["data"]["total_cost"]
    assert first[4] == "error during generation from openai: Provider disconnected unexpectedly"
    assert second[0] == "ok" and fake.asked == ["cmpl-abc123"]


def test_a_choice_that_ends_in_error_is_a_failed_attempt_billed_and_retried(ledger, tmp_path):
    """The errors doc's choice with `finish_reason: "error"` and its own `error`, as a stream
    chunk, then the usage chunk of the recorded stream: billed as the usage says, not an answer."""
    choice_error = json.dumps(json.loads(fixture("chat_completion_choice_error_doc.json")))
    usage_chunk = [line for line in GPT4O_STREAM.split(b"\n\n") if b'"usage"' in line][0]
    body = b"data: " + choice_error.encode() + b"\n\n" + usage_chunk + b"\n\ndata: [DONE]\n\n"
    fake = FakeOpenRouter(stream(body, SSE), stream())
    client = client_for(tmp_path, fake)
    result = go(client, lambda: ask(client, ledger))
    assert result.response == "Pebbles and Skipper."
    first, second = calls(ledger)
    assert first[0] == "failed" and first[3] == 0.0001025
    assert first[4] == "error during generation: Provider disconnected mid-stream"
    assert second[0] == "ok"
    assert ledger.total_cost() == pytest.approx(2 * 0.0001025, abs=1e-12)


# ---- error bodies ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, status, kind, expected", [
    ("error_400_provider_raw_openai.json", 400, LLMError,
     "HTTP 400 from OpenAI: Response input messages must contain the word 'json' in some form to use "
     "'text.format' of type 'json_object'."),
    ("error_400_provider_raw_is_byok.json", 400, LLMError,
     "HTTP 400 from Crucible: Model 'moonshotai/kimi-k2.6' supports at most 1 image per prompt."),
    ("error_400_strict_schema_additionalProperties.json", 400, LLMError,
     "HTTP 400 from OpenAI: Invalid schema for response_format 'default': In context=(), "
     "'additionalProperties' is required to be supplied and to be false."),
    ("error_401_no_auth_credentials.json", 401, FatalLLMError, "HTTP 401: No auth credentials found"),
    ("error_402_insufficient_credits.json", 402, FatalLLMError,
     "HTTP 402: This request requires more credits, or fewer max_tokens. You requested up to 65536"),
    ("error_429_provider_rate_limited_google.json", 429, RetryableError,
     "HTTP 429 from Google: google/gemini-2.0-flash-exp:free is temporarily rate-limited upstream."),
    ("error_429_retry_after_in_metadata.json", 429, RetryableError,
     "HTTP 429 from Venice: meta-llama/llama-3.3-70b-instruct:free is temporarily rate-limited upstream."),
    ("error_429_capacity_exhausted_doc.json", 429, RetryableError,
     "HTTP 429: All providers for anthropic/claude-sonnet-4.5 are at capacity. Retry after 40 seconds."),
])
def test_an_error_says_the_provider_and_its_reason_on_one_line(ledger, tmp_path, name, status, kind, expected):
    fake = FakeOpenRouter(error(name, status))
    client = client_for(tmp_path, fake, max_retries=0)
    with pytest.raises(kind) as err:
        go(client, lambda: ask(client, ledger))
    message = str(err.value)
    assert expected in message
    assert "Provider returned error" not in message and "\n" not in message and KEY not in message
    assert len(fake.sent) == 1
    if kind is LLMError:  # the request itself is wrong: asking again would not help
        assert not isinstance(err.value, (RetryableError, FatalLLMError))
    [(status_, gen_id, computed, provider, recorded)] = calls(ledger)
    assert (status_, gen_id, computed, provider) == ("failed", None, 0.0, None)  # not billed
    assert expected in recorded and len(recorded) < 400
    if status == 402:
        assert "out of credits" in message


def test_a_reason_that_echoes_the_key_does_not_show_it(ledger, tmp_path):
    body = json.loads(fixture("error_400_provider_raw_openai.json"))
    body["error"]["metadata"]["raw"] = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}})
    fake = FakeOpenRouter(lambda: httpx.Response(400, json=body))
    client = client_for(tmp_path, fake)
    with pytest.raises(LLMError) as err:
        go(client, lambda: ask(client, ledger))
    assert str(err.value) == "HTTP 400 from OpenAI: Incorrect API key provided: ***"
    assert KEY not in calls(ledger)[0][4]


@pytest.mark.parametrize("name, seconds", [
    ("error_429_provider_rate_limited_google.json", None),
    ("error_429_retry_after_in_metadata.json", 17.0),  # metadata.retry_after_seconds (and its headers)
    ("error_429_capacity_exhausted_doc.json", 40.0),  # availability.retry_after
])
def test_a_429_says_how_long_to_wait_when_its_body_does(ledger, tmp_path, name, seconds):
    client = client_for(tmp_path, FakeOpenRouter(error(name, 429)), max_retries=0)
    with pytest.raises(RetryableError) as err:
        go(client, lambda: ask(client, ledger))
    assert err.value.retry_after == seconds


def test_a_retry_after_header_comes_first(ledger, tmp_path):
    client = client_for(tmp_path, FakeOpenRouter(error("error_429_retry_after_in_metadata.json", 429,
                                                       {"Retry-After": "3"})), max_retries=0)
    with pytest.raises(RetryableError) as err:
        go(client, lambda: ask(client, ledger))
    assert err.value.retry_after == 3.0


def test_a_429_is_retried(ledger, tmp_path):
    fake = FakeOpenRouter(error("error_429_provider_rate_limited_google.json", 429), stream())
    client = client_for(tmp_path, fake)
    assert go(client, lambda: ask(client, ledger)).response == "Pebbles and Skipper."
    assert [r[0] for r in calls(ledger)] == ["failed", "ok"]


def test_a_model_whose_providers_refuse_a_parameter_is_asked_without_it(ledger, tmp_path):
    """require_parameters and a parameter no provider of the model takes: OpenRouter's 404.
    temperature and reasoning are dropped for that model (require_parameters stays)."""
    no_endpoint = lambda: httpx.Response(404, json={"error": {  # noqa: E731
        "message": "No endpoints found that can handle the requested parameters.", "code": 404}})
    fake = FakeOpenRouter(no_endpoint, stream(), stream())
    client = client_for(tmp_path, fake)

    async def twice():
        await ask(client, ledger)
        return await ask(client, ledger)

    assert go(client, twice).response == "Pebbles and Skipper."
    first, second, third = fake.sent
    assert first["temperature"] == 0 and "reasoning" in first
    assert "temperature" not in second and "reasoning" not in second
    assert "temperature" not in third and "reasoning" not in third  # remembered for the model
    assert [r[0] for r in calls(ledger)] == ["failed", "ok", "ok"]
    assert "HTTP 404: No endpoints found" in calls(ledger)[0][4]


# ---- what is sent ---------------------------------------------------------------------------

def test_the_request_body(ledger, tmp_path):
    fake = FakeOpenRouter(stream())
    client = client_for(tmp_path, fake, max_price={"prompt": 1, "completion": 2})
    go(client, lambda: ask(client, ledger, max_tokens=1000))
    [sent] = fake.sent
    assert sent["temperature"] == 0
    assert sent["reasoning"] == {"effort": "low", "exclude": True}
    assert sent["max_tokens"] == 1000
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert "usage" not in sent  # deprecated
    assert sent["provider"] == {"max_price": {"prompt": 1, "completion": 2}}
    assert "response_format" not in sent

    body = client.request_body(GPT4O, MESSAGES, CorrectedPage, 1000)
    assert body["provider"] == {"require_parameters": True, "max_price": {"prompt": 1, "completion": 2}}
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["schema"] is strict_schema(CorrectedPage)
    plain = client_for(tmp_path, FakeOpenRouter()).request_body(GPT4O, MESSAGES, CorrectedPage, 1000)
    assert plain["provider"] == {"require_parameters": True}
    assert "provider" not in client_for(tmp_path, FakeOpenRouter()).request_body(GPT4O, MESSAGES)


class Span(BaseModel):
    start: int = Field(ge=0)
    end: int = Field(gt=0, lt=100000)
    label: str = Field(pattern=r"^[a-z]+$", min_length=1, max_length=20)


class Note(BaseModel):
    text: str = Field(max_length=500)
    span: Span | None = None


class Annotated(BaseModel):
    main: Span = Field(description="the span the page is about")
    notes: list[Note] = Field(default_factory=list)
    day: date
    score: float = Field(ge=0, le=1)


def schema_objects(node, path="$"):
    """Every (path, object schema) in `node`; and fails on an unstrict keyword anywhere."""
    found = []
    if isinstance(node, dict):
        bad = UNSTRICT & set(node) - ({"format", "pattern"} if path.endswith(".properties") else set())
        assert not bad, f"{path}: {bad}"
        if node.get("type") == "object" or "properties" in node:
            found.append((path, node))
        for key, value in node.items():
            found += schema_objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += schema_objects(value, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("model, objects", [(CorrectedPage, 1), (Annotated, 3)])
def test_the_schema_is_strict_on_every_object_and_has_no_bounds(model, objects):
    schema = strict_schema(model)
    found = schema_objects(schema)
    assert len(found) == objects  # the root, and with nested models each of its $defs
    for path, node in found:
        assert node["additionalProperties"] is False, path
        assert node["required"] == list(node["properties"]), path
    assert strict_schema(model) is schema  # built once per class
    if model is Annotated:
        assert set(schema["$defs"]) == {"Span", "Note"}
        assert schema["properties"]["main"] == {"$ref": "#/$defs/Span"}  # nothing beside a $ref
        assert schema["properties"]["notes"]["items"] == {"$ref": "#/$defs/Note"}


def test_the_bounds_left_out_of_the_schema_are_still_checked_on_the_answer():
    CorrectedPage.model_validate_json('{"text": "", "confidence": 0.5, "changes": [], "unsure": false}')
    with pytest.raises(ValidationError):
        CorrectedPage.model_validate_json('{"text": "", "confidence": 2, "changes": [], "unsure": false}')
    good = {"main": {"start": 0, "end": 3, "label": "abc"}, "day": "2025-08-06", "score": 1}
    Annotated.model_validate(good)
    with pytest.raises(ValidationError):
        Annotated.model_validate({**good, "main": {"start": 0, "end": 3, "label": "ABC"}})


def pending_call(ledger, model: str, started_at: float):
    from infra.checkpoint import PendingCall

    call_id = ledger.begin_call(ledger.run, "correct", 1, model, 1)
    ledger.set_generation_id(call_id, "gen-1764791728-YEVpGoInRszZx8oZ508T")
    return PendingCall(call_id, ledger.run, "correct", 1, model, "gen-1764791728-YEVpGoInRszZx8oZ508T", started_at)


def test_a_pending_call_of_a_model_since_retired_is_resolved_at_the_providers_figure(ledger, tmp_path):
    fake = FakeOpenRouter(generation=json.loads(fixture("generation_doc_example.json")))
    client = client_for(tmp_path, fake)
    call = pending_call(ledger, "retired/model-no-longer-listed", time.time())
    counts = go(client, lambda: client.resolve_pending([call], lambda c: LedgerRecorder(ledger, c.run_id, c.stage, c.page)))
    assert counts["recovered"] == 1
    assert calls(ledger) == [("recovered", call.generation_id, None, 0.0015, "run ended mid-call; cost from the provider")]


def test_a_pending_call_the_provider_never_knew_is_lost_after_a_day_not_pending_forever(ledger, tmp_path):
    client = client_for(tmp_path, FakeOpenRouter(generation=None), resolve_timeout=0.2)
    recent, old = pending_call(ledger, GPT4O, time.time() - 60), pending_call(ledger, GPT4O, time.time() - 25 * 3600)
    counts = go(client, lambda: client.resolve_pending(
        [recent, old], lambda c: LedgerRecorder(ledger, c.run_id, c.stage, c.page)))
    assert counts == {"recovered": 0, "lost": 1, "unresolved": 1}
    statuses = [r[0] for r in calls(ledger)]
    assert statuses == ["pending", "lost"] and ledger.total_cost() == 0
