"""The catalogue of bad input (docs/failures.md) not proven elsewhere, each through the real
`ar.py`: one clear line, the exit code it deserves, and nothing changed or leaked."""
import hashlib
import io
import os
import sqlite3
import struct
import subprocess
import zlib

import pytest
from PIL import Image

from tests.conftest import llm_env, one_error_line, run_ar, start_ar, text_pages

KEY = "sk-or-v1-catalogue-RECOGNISABLE-42"
PADDING = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def encrypted_pdf(user: bytes = b"secret", owner: bytes = b"owner") -> bytes:
    """A one-page PDF under the standard security handler (RC4 40-bit, revision 2: PDF 1.7
    spec, 7.6.3), with a user password: readers must ask for it to open the file."""
    def pad(password: bytes) -> bytes:
        return (password + PADDING)[:32]

    o = rc4(hashlib.md5(pad(owner)).digest()[:5], pad(user))
    perms, file_id = -4, b"0123456789abcdef"
    u = rc4(hashlib.md5(pad(user) + o + struct.pack("<i", perms) + file_id).digest()[:5], PADDING)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
               b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>" % (o.hex().encode(), u.hex().encode(), perms)]
    pdf, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, file_id.hex().encode(), file_id.hex().encode(), xref)
    return bytes(pdf)


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG of a few hundred bytes that says it has 900 million pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (8, 8), 1).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, then its CRC
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


@pytest.mark.parametrize("name, content, needle", [
    ("locked.pdf", encrypted_pdf(), "the PDF is encrypted (password-protected); decrypt it first"),
    ("huge.png", huge_png(), "image too large"),
    ("scans/p2.png", huge_png(), "image too large"),  # in a folder, after a good page
])
def test_bad_page_sources_are_refused_in_one_line(books_dir, tmp_path, name, content, needle):
    src = tmp_path / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(content)
    if src.parent.name == "scans":
        Image.new("L", (40, 60), 255).save(src.parent / "p1.png")
    r = run_ar("add", str(src.parent if src.parent.name == "scans" else src), "--id", "bad", books_dir=books_dir)
    assert r.returncode == 1
    assert one_error_line(r, needle).startswith(f"ar: error: {src}")
    assert list(books_dir.iterdir()) == []


@pytest.mark.parametrize("args, env, needle", [
    (("--model", "google/gemini-9"), {}, "unknown model 'google/gemini-9'"),
    ((), {"OPENROUTER_API_KEY": ""}, "no API key: set OPENROUTER_API_KEY"),
    ((), {"OPENROUTER_API_KEY": "sk-or-v1-WRONG-key-000000"}, "the provider refused the API key (HTTP 401"),
])
def test_llm_settings_that_cannot_work_stop_before_spending(sim, books_dir, tmp_path, ocr_book, args, env, needle):
    server = sim("--api-key", KEY)
    ocr_book(books_dir)
    r = run_ar("process", "book", *args, books_dir=books_dir, env={**llm_env(server, tmp_path), **env})
    assert r.returncode == 1
    one_error_line(r, needle)
    assert server.credits() == 0
    assert "WRONG-key" not in r.stdout + r.stderr


@pytest.mark.parametrize("args, env, code, needle", [
    (("--model", "nope/model"), {}, 1, "ar: error: unknown model 'nope/model' at "),
    ((), {"OPENROUTER_API_KEY": ""}, 1, "ar: error: no API key: set OPENROUTER_API_KEY"),
    ((), {"OPENROUTER_API_KEY": "sk-or-v1-WRONG-key-000000"}, 1, "ar: error: the provider refused the API key (HTTP 401"),
    (("--stages", "ocr"), {"AR_EXECUTOR": "foo"}, 2, "ar: error: AR_EXECUTOR='foo': use 'local' (the default) or 'ray'"),
])
def test_a_run_refused_before_any_work_is_no_run(sim, books_dir, tmp_path, args, env, code, needle):
    """Its one-line error, and the book as it was: no run on record, its state and runs unchanged."""
    server = sim("--api-key", KEY)
    assert run_ar("add", str(text_pages(tmp_path / "scans", 1)), "--id", "book", books_dir=books_dir).returncode == 0
    before = run_ar("status", "book", "--json", books_dir=books_dir).stdout
    r = run_ar("process", "book", *args, books_dir=books_dir, env={**llm_env(server, tmp_path), **env})
    assert r.returncode == code
    assert one_error_line(r, needle).startswith(needle)
    assert run_ar("status", "book", "--json", books_dir=books_dir).stdout == before


def _corrupt(db):
    db.write_bytes(b"this is not a database" * 100)


def _newer(db):
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()


@pytest.mark.parametrize("spoil, needle", [
    (_corrupt, "cannot be read (file is not a database); it was left untouched"),
    (_newer, "has schema version 99, newer than this ar knows"),
])
@pytest.mark.parametrize("command", ["process", "status", "cost"])
def test_a_checkpoint_ar_cannot_use_is_named_and_left_untouched(books_dir, ocr_book, spoil, needle, command):
    book = ocr_book(books_dir)
    for f in book.glob("checkpoint.db-*"):
        f.unlink()
    spoil(book / "checkpoint.db")
    before = (book / "checkpoint.db").read_bytes()
    r = run_ar(command, "book", books_dir=books_dir)
    assert r.returncode == 1
    assert str(book / "checkpoint.db") in one_error_line(r, needle)
    assert (book / "checkpoint.db").read_bytes() == before


@pytest.mark.parametrize("content, needle", [
    (b"this line is not a setting\n", ".env: line 1 does not parse"),
    (b"AR_WORKERS=4\n\n# the key\nOPENROUTER_API_KEY='" + KEY.encode() + b"\n", ".env: line 4 does not parse"),
    (b"\xff\xfe\x00garbage", ".env: not UTF-8 text"),
    (b"AR_WORKERS=lots\n", "bad configuration AR_WORKERS"),
    (b"AR_BUDGET_USD=-3\n", "bad configuration AR_BUDGET_USD: Input should be greater than 0"),
])
def test_a_bad_env_file_is_a_usage_error_that_shows_no_secret(books_dir, tmp_path, content, needle):
    (tmp_path / ".env").write_bytes(content)
    r = run_ar("status", books_dir=books_dir, cwd=tmp_path)
    assert r.returncode == 2
    one_error_line(r, needle)
    assert KEY not in r.stdout + r.stderr


@pytest.mark.parametrize("command", [("library",), ("library", "--json"), ("monitor", "--once"),
                                     ("monitor", "--json")])
def test_a_reader_that_leaves_before_the_report_is_no_error(books_dir, command):
    """`ar.py library | head -0`: the reader is gone before ar writes. Its report was not wanted;
    that is no error of ar's (no 'Broken pipe' line, exit 0), as for any Unix tool."""
    read, write = os.pipe()
    os.close(read)
    with open(write, "wb") as gone:
        r = start_ar(*command, books_dir=books_dir, stdout=gone, stderr=subprocess.PIPE, text=True)
        _, err = r.communicate(timeout=60)
    assert r.returncode == 0 and err == "", err
