"""`make demo`: the main job end to end, offline.

Makes the sample book's page images, starts the local OpenRouter-compatible server on a
free port, runs `ar.py process sample` against it, shows where the results are, what they
cost and how good they are, and stops the server. A second run finds the book done.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script: tools/ and the project's packages sit in ROOT
    sys.path.insert(0, str(ROOT))
BOOK = ROOT / "books" / "sample"
DEMO_KEY = "sk-or-demo-local-key"  # the local server's key; never a real one


def start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.openrouter_sim", "--port", "0", "--latency-ms", "300",
         "--jitter-ms", "200", "--api-key", DEMO_KEY],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"demo: the local server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def quality_report() -> None:
    """The character error rate of the whole book's text, merged the same way from the
    pages as each stage left them, against the true text."""
    from infra.books import Book
    from pipeline.layout import read_layout
    from pipeline.merge import book_markdown
    from pipeline.registry import STAGES
    from tools.quality import book_cer

    book = Book(BOOK)
    layouts = read_layout(book)
    truth = (BOOK / "truth" / "book.md").read_text()
    rates = []
    for spec in STAGES:
        if spec.per_page:
            texts = [spec.read_page(book, p)["text"] for p in range(1, book.page_count() + 1)]
            rates.append(f"after {spec.name} {book_cer(book_markdown(texts, layouts), truth):.2%}")
    print("character error rate of the book's text against the true text: " + ", ".join(rates))


def main() -> int:
    subprocess.run([sys.executable, "-m", "tools.make_sample"], cwd=ROOT, check=True)
    server, url = start_server()
    print(f"demo: local OpenRouter-compatible server at {url}")
    try:
        env = dict(os.environ, OPENROUTER_BASE_URL=url, OPENROUTER_API_KEY=DEMO_KEY,
                   AR_BOOKS_DIR=str(ROOT / "books"))
        code = subprocess.run([sys.executable, str(ROOT / "ar.py"), "process", "sample"],
                              cwd=ROOT, env=env).returncode
    finally:
        server.terminate()
        server.wait(timeout=10)
    if code != 0:
        return code
    quality_report()
    python = os.path.relpath(sys.executable, ROOT)  # the project's environment: a bare python lacks ar's libraries
    print(f"see the cost report with: {python} ar.py cost sample   (or {BOOK / 'cost_report.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
