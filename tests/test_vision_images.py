"""With --vision a page goes to the model as the model uses it (infra/images.py): at most
MAX_SIDE px on its long side, compactly encoded, and the budget reserves the bound of the
image really sent, not a guess. On real scans (tests/data/real-scans/)."""
import asyncio
import base64
import io

import pytest
from PIL import Image
from pydantic import SecretStr

from infra.books import Book
from infra.images import MAX_SIDE, PIXELS_PER_TOKEN_AT_MOST, image_tokens_bound
from infra.llm_client import LLMClient, image_part
from infra.pricing import BYOK_FEE_BOUND
from tests.conftest import REAL_SCANS, run_ar
from tests.test_openrouter_prices import served_prices


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Book:
    """multipage.pdf's six real pages as `ar add` keeps them: up to 9000 px, 3.5 MB a page."""
    books = tmp_path_factory.mktemp("books")
    assert run_ar("add", str(REAL_SCANS / "multipage.pdf"), "--id", "scans", books_dir=books).returncode == 0
    return Book(books / "scans")


def sent(part: dict) -> tuple[str, bytes, Image.Image]:
    url = part["image_url"]["url"]
    mime, data = url.removeprefix("data:").split(";base64,")
    raw = base64.b64decode(data)
    return mime, raw, Image.open(io.BytesIO(raw))


def test_a_large_noisy_scan_is_sent_downscaled_and_compact(scans):
    source = scans.source_image(6)  # a 300-dpi landscape page, 3300 x 2550, a 3.6 MB PNG
    with Image.open(source) as original:
        assert max(original.size) > MAX_SIDE
        ratio = original.size[0] / original.size[1]
    mime, raw, image = sent(image_part(source))
    assert mime == "image/jpeg" and image.mode == "L"  # grey: the page has no colour
    assert max(image.size) == MAX_SIDE and image.size[0] / image.size[1] == pytest.approx(ratio, rel=0.01)
    assert len(raw) < 600_000 and len(raw) < source.stat().st_size / 6


def test_a_page_past_what_providers_accept_is_brought_within_it(scans):
    source = scans.source_image(2)  # 9000 x 9000
    with Image.open(source) as original:
        assert original.size == (9000, 9000)
    _, raw, image = sent(image_part(source))
    assert image.size == (MAX_SIDE, MAX_SIDE) and len(raw) < 200_000


def test_a_bitonal_scan_stays_black_and_white_and_smaller_than_its_source(tmp_path):
    books = tmp_path / "books"
    assert run_ar("add", str(REAL_SCANS / "linn.pdf"), "--id", "linn", books_dir=books).returncode == 0
    source = Book(books / "linn").source_image(1)
    mime, raw, image = sent(image_part(source))
    assert mime == "image/png" and image.mode == "1" and max(image.size) == MAX_SIDE
    assert len(raw) < source.stat().st_size


def test_the_budget_reserves_the_bound_of_the_image_sent(scans, tmp_path):
    prices = served_prices(tmp_path, "models_subset_2026-08.json")
    model = "openai/gpt-4.1-mini"
    client = LLMClient("http://127.0.0.1:9/api/v1", SecretStr("sk-or-v1-vision-000000000"), prices)
    try:
        text = {"role": "user", "content": [{"type": "text", "text": "page"}]}
        bare = client.worst_case(client.request_body(model, [text], max_tokens=100))
        image = image_part(scans.source_image(6))
        with_image = client.worst_case(client.request_body(
            model, [{"role": "user", "content": [*text["content"], image]}], max_tokens=100))
        _, _, sent_image = sent(image)
        tokens = image_tokens_bound(image["image_url"]["url"])
        assert tokens == -(-sent_image.size[0] * sent_image.size[1] // PIXELS_PER_TOKEN_AT_MOST)
        dearest = prices.get(model).dearest()
        per_image = tokens * max(dearest.prompt, dearest.input_cache_write or 0) + dearest.image
        assert with_image - bare == pytest.approx(per_image * (1 - dearest.discount) * BYOK_FEE_BOUND, rel=1e-6)
    finally:
        asyncio.run(client.aclose())
