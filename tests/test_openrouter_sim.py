"""The local server behaves like OpenRouter (issue 11): real HTTP against tools/openrouter_sim.py,
each behaviour checked against the shapes of the real payloads in tests/fixtures/openrouter/."""
from __future__ import annotations

import json
import math
import re
import time

import httpx
import pytest

from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "openrouter"
KEY = "sk-or-v1-sim-test-0123456789abcdef"
FLASH = "google/gemini-2.5-flash"
MINI = "openai/gpt-4o-mini"
PAGE = "<ocr_text>\n" + "Tbe qnick brown f0x jumps over the lazy dog, and tben it rests.\n" * 12 + "</ocr_text>"
GEN_ID = re.compile(r"^gen-\d+-[A-Za-z0-9]{20}$")


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


def fixture_events(name: str) -> list:
    return events((FIXTURES / name).read_text())


def events(text: str) -> list:
    """An SSE body as a list: "comment" for each `:` line, each data chunk parsed, "[DONE]"."""
    out = []
    for line in text.splitlines():
        if line.startswith(":"):
            out.append("comment")
        elif line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def body(model: str = FLASH, stream: bool = True, **extra) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": PAGE}], **extra}


def post(server, payload: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/chat/completions", json=payload, timeout=30, headers=auth(server))


def auth(server) -> dict:
    return {"Authorization": f"Bearer {server.key}"}


def get(server, path: str, **params) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", params=params, headers=auth(server), timeout=10)


def generation(server, gen_id: str, timeout: float = 10.0) -> dict:
    """/generation's record, once it has one (404 until a moment after the generation ends)."""
    deadline = time.monotonic() + timeout
    while True:
        r = get(server, "/generation", id=gen_id)
        if r.status_code == 200:
            return r.json()["data"]
        assert r.status_code == 404 and time.monotonic() < deadline, r.text
        time.sleep(0.05)


def data_chunks(evs: list) -> list[dict]:
    return [e for e in evs if isinstance(e, dict)]


def test_a_stream_sends_the_id_in_its_headers_then_comments_then_small_chunks_then_usage(sim):
    server = sim("--api-key", KEY, "--processing-ms", "350", "--chunk-tokens", "2")
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body(), headers=auth(server),
                      timeout=30) as r:
        assert r.status_code == 200
        header_id = r.headers["X-Generation-Id"]  # known before any byte of the body is read
        assert GEN_ID.match(header_id)
        evs = events(r.read().decode())

    chunks = data_chunks(evs)
    first_data = evs.index(chunks[0])
    assert evs[:first_data] == ["comment"] * first_data and first_data >= 3  # 350 ms at one per 0.1 s
    assert {c["id"] for c in chunks} == {header_id}
    assert evs[-1] == "[DONE]" and evs[-2] is chunks[-1]

    # the same keys as the real stream's chunks (system_fingerprint is OpenAI's own)
    real = data_chunks(fixture_events("chat_stream_gpt4o_usage.sse"))
    assert set(chunks[1]) == set(real[1]) - {"system_fingerprint"}
    assert set(chunks[1]["choices"][0]) == set(real[1]["choices"][0])
    # the finish chunk, then a chunk of its own with the usage and its cost, as in the real one
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[-2]
    usage, real_usage = chunks[-1]["usage"], real[-1]["usage"]
    assert chunks[-1]["choices"][0]["finish_reason"] is None
    assert set(real_usage) <= set(usage) and usage["cost"] > 0 and usage["is_byok"] is False
    assert set(real_usage["cost_details"]) <= set(usage["cost_details"])

    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "The quick brown fox" in text
    content_chunks = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) == math.ceil(len(text) / 8)  # 2 tokens of 4 characters a chunk
    assert usage["completion_tokens"] == math.ceil(len(text) / 4)


def test_a_whole_answer_carries_its_id_in_a_header_too(sim):
    server = sim("--api-key", KEY)
    r = post(server, body(stream=False))
    assert r.status_code == 200 and r.headers["X-Generation-Id"] == r.json()["id"]
    assert GEN_ID.match(r.json()["id"]) and r.json()["provider"] == "Google AI Studio"


def abandon(server) -> str:
    """Open a stream, read its headers, and leave before any data chunk; its generation id."""
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body(), headers=auth(server),
                      timeout=30) as r:
        gen_id = r.headers["X-Generation-Id"]
        first = next(r.iter_raw())
        assert first.startswith(b": OPENROUTER PROCESSING")  # a comment, never a data chunk
    return gen_id


def test_a_stream_left_before_its_first_data_chunk_is_billed_in_full(sim):
    server = sim("--api-key", KEY, "--processing-ms", "3000", "--generation-delay-ms", "0", "--bill-abandoned")
    gen_id = abandon(server)
    record = generation(server, gen_id)
    assert record["total_cost"] > 0 and record["cancelled"] is True and record["finish_reason"] == "stop"

    # the same request heard to its end costs the same: the abandoned one was generated whole
    whole = post(server, body(stream=False)).json()["usage"]
    assert record["total_cost"] == pytest.approx(whole["cost"], rel=1e-12)
    assert record["native_tokens_completion"] == whole["completion_tokens"]
    [abandoned] = [g for g in server.generations()["data"] if g["id"] == gen_id]
    assert abandoned["abandoned"] and abandoned["status"] == "complete"
    assert server.credits() == pytest.approx(record["total_cost"] + whole["cost"], rel=1e-12)
    assert server.key_info()["usage"] == pytest.approx(server.credits(), rel=1e-12)


def test_by_default_a_stream_left_before_its_first_data_chunk_costs_nothing(sim):
    server = sim("--api-key", KEY, "--processing-ms", "3000", "--generation-delay-ms", "0")
    gen_id = abandon(server)
    record = generation(server, gen_id)
    assert record["total_cost"] == 0 and record["cancelled"] is True
    assert server.credits() == 0 and server.key_info()["usage"] == 0


def test_a_provider_error_is_a_400_with_the_providers_body_in_metadata_raw(sim):
    server = sim("--api-key", KEY, "--fail-400", "1")
    r = post(server, body(MINI))
    assert r.status_code == 400
    got, real = r.json(), fixture("error_400_provider_raw_is_byok.json")
    assert set(got) == set(real) and set(got["error"]) == set(real["error"])
    assert set(got["error"]["metadata"]) == set(real["error"]["metadata"])
    assert got["error"]["message"] == "Provider returned error" and got["error"]["code"] == 400
    assert got["error"]["metadata"]["provider_name"] == "OpenAI"
    assert json.loads(got["error"]["metadata"]["raw"])["error"]["message"]  # JSON, as a string
    assert server.credits() == 0 and server.generations()["data"] == []


STRICT = {"type": "json_schema", "json_schema": {"name": "default", "strict": True, "schema": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


def test_openais_strict_mode_refuses_a_schema_without_additional_properties_false(sim):
    server = sim("--api-key", KEY)
    r = post(server, body(MINI, response_format=STRICT))
    assert r.status_code == 400
    real = fixture("error_400_strict_schema_additionalProperties.json")
    got = r.json()["error"]
    assert got["metadata"].pop("is_byok") is False  # 2026's shape (error_400_provider_raw_is_byok.json)
    assert got == real["error"]  # otherwise the very text of the real refusal, raw included

    nested = json.loads(json.dumps(STRICT))
    schema = nested["json_schema"]["schema"]
    schema["additionalProperties"] = False
    schema["properties"]["page"] = {"type": "object", "properties": {"n": {"type": "integer"}},
                                    "required": ["n"], "additionalProperties": False}
    r = post(server, body(MINI, response_format=nested))  # "page" is not in required
    raw = json.loads(r.json()["error"]["metadata"]["raw"])["error"]
    assert r.status_code == 400 and raw["param"] == "response_format"
    assert raw["message"].endswith("In context=(), 'required' is required to be supplied and to be an array "
                                   "including every key in properties. Missing 'page'.")

    schema["required"].append("page")
    del schema["properties"]["page"]["additionalProperties"]
    raw = json.loads(post(server, body(MINI, response_format=nested)).json()["error"]["metadata"]["raw"])
    assert "In context=('properties', 'page'), 'additionalProperties'" in raw["error"]["message"]

    schema["properties"]["page"]["additionalProperties"] = False
    assert post(server, body(MINI, response_format=nested)).status_code == 200  # strict and valid
    assert post(server, body(FLASH, response_format=STRICT)).status_code == 200  # not an OpenAI model
    assert server.generations()["requests"] == {"400": 3, "ok": 2}


def test_a_choice_error_mid_stream_is_billed_for_what_was_generated(sim):
    server = sim("--api-key", KEY, "--fail-choice-error", "1", "--chunk-tokens", "3", "--generation-delay-ms", "0")
    r = post(server, body())
    chunks = data_chunks(events(r.text))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert 0 < len(text) < len(PAGE) / 2 + 8  # broken off halfway
    [broken] = [c for c in chunks if c["choices"][0]["finish_reason"] == "error"]
    real = fixture("chat_completion_choice_error_doc.json")["choices"][0]
    assert broken["choices"][0]["error"] == real["error"]
    assert set(broken["error"]) >= {"code", "message"}  # and at the top, as the streaming doc shows
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == math.ceil(len(text) / 4) and usage["cost"] > 0
    assert generation(server, chunks[0]["id"])["total_cost"] == pytest.approx(usage["cost"], rel=1e-12)
    assert server.credits() == pytest.approx(usage["cost"], rel=1e-12)

    whole = post(server, body(stream=False)).json()
    assert whole["choices"][0]["finish_reason"] == "error" and whole["choices"][0]["error"] == real["error"]


def test_an_answer_past_max_tokens_stops_at_length_reasoning_counted_in(sim):
    server = sim("--api-key", KEY, "--reasoning-tokens", "50")
    chunks = data_chunks(events(post(server, body("openai/o4-mini", max_tokens=60)).text))
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    usage = chunks[-1]["usage"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert finish == ["length"] and len(text) == 40  # 10 tokens left after 50 of reasoning
    assert usage["completion_tokens"] == 60 and usage["completion_tokens_details"]["reasoning_tokens"] == 50
    assert usage["cost"] == pytest.approx(usage["prompt_tokens"] * 0.0000011 + 60 * 0.0000044, rel=1e-12)
    assert server.credits() == pytest.approx(usage["cost"], rel=1e-12)


def test_openrouter_auto_is_listed_at_a_variable_price_and_billed_as_the_model_it_routes_to(sim):
    assert "openrouter/auto" not in {m["id"] for m in get(sim(), "/models").json()["data"]}
    server = sim("--api-key", KEY, "--auto-router", "--generation-delay-ms", "0")
    [auto] = [m for m in get(server, "/models").json()["data"] if m["id"] == "openrouter/auto"]
    real = fixture("models_variable_price_reconstructed.json")["data"][0]
    assert auto["pricing"] == real["pricing"]

    routed = post(server, body("openrouter/auto", stream=False)).json()
    direct = post(server, body(FLASH, stream=False)).json()
    assert routed["model"] == FLASH and routed["usage"]["cost"] == pytest.approx(direct["usage"]["cost"], rel=1e-12)
    record = generation(server, routed["id"])
    assert record["router"] == "openrouter/auto" and record["model"] == FLASH


def test_byok_charges_openrouters_fee_and_reports_the_providers_bill_apart(sim):
    server = sim("--api-key", KEY, "--byok", "--generation-delay-ms", "0")
    answer = post(server, body(stream=False)).json()
    usage, real = answer["usage"], fixture("chat_completion_byok_google.json")["usage"]
    assert set(real["cost_details"]) == set(usage["cost_details"])
    upstream = usage["cost_details"]["upstream_inference_cost"]
    assert usage["is_byok"] is True and upstream > 0
    assert usage["cost"] == pytest.approx(0.05 * upstream, rel=1e-12)
    assert upstream == pytest.approx(usage["cost_details"]["upstream_inference_prompt_cost"]
                                     + usage["cost_details"]["upstream_inference_completions_cost"], rel=1e-12)

    record = generation(server, answer["id"])
    assert record["is_byok"] is True and record["total_cost"] == usage["cost"]
    assert record["upstream_inference_cost"] == upstream
    assert server.credits() == pytest.approx(usage["cost"], rel=1e-12)  # OpenRouter's credits: the fee
    key = server.key_info()
    assert key["usage"] == pytest.approx(usage["cost"], rel=1e-12)
    assert key["byok_usage"] == pytest.approx(upstream, rel=1e-12)


def test_a_prompt_past_the_override_threshold_is_billed_at_the_long_context_prices(sim):
    server = sim("--api-key", KEY)
    [sonnet] = [m for m in get(server, "/models").json()["data"] if m["id"] == "anthropic/claude-sonnet-4.5"]
    [override] = sonnet["pricing"]["overrides"]
    real = fixture("models_subset_2026-08.json")["data"][0]["pricing"]["overrides"][0]
    assert set(override) == set(real) - {"input_cache_write_1h"} and override["min_prompt_tokens"] == 200000

    def cost(chars: int) -> tuple[float, dict]:
        payload = {"model": sonnet["id"], "messages": [{"role": "user", "content": "x" * chars}]}
        usage = post(server, payload).json()["usage"]
        return usage["cost"], usage

    short, usage = cost(4000)
    assert short == pytest.approx(usage["prompt_tokens"] * 0.000003 + usage["completion_tokens"] * 0.000015)
    long, usage = cost(4 * 200000)
    assert usage["prompt_tokens"] == 200000
    assert long == pytest.approx(200000 * float(override["prompt"])
                                 + usage["completion_tokens"] * float(override["completion"]), rel=1e-12)


def test_key_answers_like_openrouters_and_wants_the_key(sim):
    server = sim("--api-key", KEY)
    assert httpx.get(f"{server.url}/key", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/key", headers={"Authorization": "Bearer sk-or-v1-wrong"},
                     timeout=10).status_code == 401
    post(server, body(stream=False))
    data = get(server, "/key").json()["data"]
    assert set(data) == set(fixture("key_doc_example.json")["data"])
    assert KEY not in json.dumps(data)  # the label is masked, as OpenRouter's are
    assert data["usage"] == pytest.approx(server.credits(), rel=1e-12) and data["usage"] > 0
    assert data["byok_usage"] == 0 and data["limit"] is None and data["limit_remaining"] is None


def test_generation_answers_with_fields_openrouter_documents(sim):
    server = sim("--api-key", KEY, "--generation-delay-ms", "0")
    answer = post(server, body()).text
    gen_id = data_chunks(events(answer))[0]["id"]
    record = generation(server, gen_id)
    assert set(record) <= set(fixture("generation_doc_example.json")["data"])
    assert record["provider_name"] == "Google AI Studio" and record["is_byok"] is False
    assert record["upstream_inference_cost"] == record["total_cost"] == record["usage"] > 0


def test_the_same_request_gets_the_same_answer_whatever_the_servers_hash_seed(sim):
    """The corrector's ties (words of equal frequency) are broken by the words themselves, not
    by the order of a set, which changes with each process's hash seed."""
    tied = "<ocr_text>\nThe gummiteq boratek amqler deteqter koqos reszwed zanoid shjol hktted.\n</ocr_text>"
    request = {**body(stream=False), "messages": [{"role": "user", "content": tied}]}
    answers = set()
    for seed in ("1", "2", "3", "4"):
        server = sim(env={"PYTHONHASHSEED": seed})
        answers.add(post(server, request).json()["choices"][0]["message"]["content"])
    assert len(answers) == 1, answers


def test_the_corrector_fixes_misreadings_but_keeps_dialect_archaic_spelling_and_punctuation(sim):
    """As ar's prompts ask: a word no misreading of letter shapes explains ("warn't",
    "scrouched", "druther": Huckleberry Finn's own) is the page's spelling, not an OCR error;
    curly apostrophes and compound hyphens are the page's punctuation."""
    server = sim()
    page = ("He warn’t there to-day, so we scrouched down; I’d druther go, says I.\n"
            "Tbe qnick widow’s cat was nota well-known sight.")
    request = {**body(stream=False), "messages": [{"role": "user", "content": f"<ocr_text>\n{page}\n</ocr_text>"}]}
    answer = post(server, request).json()["choices"][0]["message"]["content"]
    assert answer == ("He warn’t there to-day, so we scrouched down; I’d druther go, says I.\n"
                      "The quick widow’s cat was not a well-known sight.")
