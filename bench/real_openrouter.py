"""Issue 11's closing figures: the ledger against the bill, one line an item, for any checkout.

    python -m bench.real_openrouter [--ar PATH] [--items 1,2,...] [--pages 4]

For each item a small fresh book (real prose, OCR done), a fresh local server from THIS
checkout (tools/openrouter_sim.py, which plays OpenRouter's real behaviours) with the item's
flags, and `PATH/ar.py process BOOK ...` as a real process. The book's ledger is read with
plain sqlite3, whatever its schema: each call costs COALESCE(provider_cost_usd,
computed_cost_usd, 0), plus COALESCE(upstream_cost_usd, 0) where that column exists (schema
2). The bill is the server's `/credits` total_usage; with BYOK the user also pays what the
provider billed to their own key, so the bill is `/key` usage + byok_usage.

The book's ledger is written by the checkout under test (its own infra.checkpoint.Ledger, in
a subprocess): an ar of ledger schema 1 refuses a ledger written by schema 2 ("newer than
this ar knows"), so a book built with this checkout's bench/books.py cannot be given to it.
The OCR outputs (ocr/page_NNNN.json, the same in both layouts) come from bench.books.page_text.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from bench.books import page_text
from tests.simserver import Sim

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-or-v1-bench-real-openrouter-0123456789"
BOOK = "book"
RUN_TIMEOUT_S = 240  # any one ar command
SEED_400 = 2  # --fail-400 0.5 with this seed: the 3rd, 4th, 8th, 12th requests are refused


# ---- the server -------------------------------------------------------------------------

def billed(s: Sim) -> dict:
    """What the server billed: /credits, what the key paid (/key), and every generation."""
    key, gens = s.key_info(), s.generations()
    return {"credits": s.credits(), "key_usage": key["usage"], "byok_usage": key.get("byok_usage", 0.0),
            "generations": gens["data"], "requests": gens["requests"]}


@contextmanager
def server(*flags: str):
    s = Sim("--api-key", KEY, *flags)
    try:
        yield s
    finally:
        s.stop()


# ---- the book, ar, the ledger ------------------------------------------------------------

LEDGER_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from infra.checkpoint import Ledger
    db, pages = Path(sys.argv[1]), int(sys.argv[2])
    ledger = Ledger.open_writer(db)
    run_id = ledger.start_run(0, "bench: ocr done")
    with ledger.snapshot():
        for p in range(1, pages + 1):
            ledger.mark_done("ocr", p, run_id)
    ledger.end_run(run_id, "done")
    ledger.close()
    import sqlite3
    print(sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0])
""")


def build_book(ar: Path, books_dir: Path, pages: int) -> int:
    """A book of `pages` blank scans with OCR done (outputs by us, ledger by `ar`'s own code);
    returns the ledger's schema version. The scans are real images: fix sends its page's."""
    root = books_dir / BOOK
    (root / "source").mkdir(parents=True)
    (root / "ocr").mkdir()
    for p in range(1, pages + 1):
        Image.new("L", (1240, 1754), 255).save(root / "source" / f"page_{p:04d}.png")
        (root / "ocr" / f"page_{p:04d}.json").write_text(json.dumps(
            {"page": p, "text": page_text(p), "mean_confidence": 90.0}))
    r = subprocess.run([sys.executable, "-c", LEDGER_SCRIPT, str(root / "checkpoint.db"), str(pages)],
                       cwd=ar, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ar)})
    if r.returncode:
        raise RuntimeError(f"cannot write the book's ledger with {ar}: {r.stderr.strip()}")
    return int(r.stdout.split()[-1])


class Env:
    """A temp dir with the books, ar's price cache and its working directory (no .env)."""

    ledger_by: Path | None = None  # the checkout whose Ledger writes the book's (default: ar's own)

    def __init__(self, ar: Path, srv: Sim, pages: int):
        self.ar, self.tmp = ar, Path(tempfile.mkdtemp(prefix="ar-real-openrouter-"))
        self.books = self.tmp / "books"
        try:
            self.schema = build_book(self.ledger_by or ar, self.books, pages)
        except BaseException:
            self.close()
            raise
        self.env = {**os.environ, "OPENROUTER_BASE_URL": srv.url, "OPENROUTER_API_KEY": KEY,
                    "AR_BOOKS_DIR": str(self.books), "AR_CACHE_DIR": str(self.tmp / "cache")}
        for name in ("AR_BUDGET_USD", "AR_CORRECT_MODEL", "AR_FIX_MODEL", "AR_MAX_PROMPT_PRICE",
                     "AR_MAX_COMPLETION_PRICE", "PYTHONPATH"):
            self.env.pop(name, None)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.ar / "ar.py"), *args]

    def run(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.argv(*args), cwd=self.tmp, env=self.env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, -1, _text(e.stdout), _text(e.stderr) + "\n(timed out)")

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=self.tmp, env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def db(self) -> Path:
        return self.books / BOOK / "checkpoint.db"

    def query(self, sql: str, args=()) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def ledger(self) -> dict:
        columns = {row[1] for row in self.query("PRAGMA table_info(calls)")}
        cost = "COALESCE(provider_cost_usd, computed_cost_usd, 0)"
        if "upstream_cost_usd" in columns:
            cost += " + COALESCE(upstream_cost_usd, 0)"
        total, calls = self.query(f"SELECT COALESCE(SUM({cost}), 0), COUNT(*) FROM calls")[0]
        statuses = dict(self.query("SELECT status, COUNT(*) FROM calls GROUP BY status"))
        errors = self.query("SELECT error FROM calls WHERE error IS NOT NULL ORDER BY call_id LIMIT 1")
        per_stage = {stage: (n, c) for stage, n, c in self.query(
            f"SELECT stage, COUNT(*), SUM({cost}) FROM calls GROUP BY stage")}
        return {"total": total, "calls": calls, "statuses": statuses, "per_stage": per_stage,
                "first_error": errors[0][0] if errors else None,
                "upstream_column": "upstream_cost_usd" in columns,
                "schema": self.query("PRAGMA user_version")[0][0]}

    def pages(self, stage: str) -> dict:
        return dict(self.query("SELECT status, COUNT(*) FROM pages WHERE stage = ? GROUP BY status", (stage,)))

    def flagged(self) -> int:
        """Corrected pages kept as OCR text because no valid answer came (`invalid_answer`)."""
        folder = self.books / BOOK / "corrected"
        return sum("invalid_answer" in json.loads(p.read_text()) for p in folder.glob("page_*.json")) \
            if folder.is_dir() else 0

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def last_line(r: subprocess.CompletedProcess) -> str:
    """The run's outcome: the first line of its summary on stdout (the progress bars go to
    stderr), else the last line of stderr."""
    out = [line for line in r.stdout.splitlines() if line.strip()]
    err = [line for line in r.stderr.splitlines() if line.strip()]
    return out[0].strip() if out else (err[-1].strip() if err else "")


def error_line(r: subprocess.CompletedProcess) -> str | None:
    for line in (r.stderr + "\n" + r.stdout).splitlines():
        if line.startswith(("ar: error:", "failed:", "budget")) or "Traceback" in line:
            return line.strip()
    return None


def usd(x: float | None) -> str:
    return "-" if x is None else f"${x:.6f}"


# ---- the items ----------------------------------------------------------------------------

def pages_summary(e: Env, pages: int) -> str:
    parts = []
    for stage in ("correct", "fix"):
        counts = e.pages(stage)
        parts.append(f"{stage} {counts.get('done', 0)}/{pages}"
                     + (f" ({counts['failed']} failed)" if counts.get("failed") else ""))
    merged = e.pages("merge").get("done", 0)
    return ", ".join(parts) + f", merge {'done' if merged else 'not done'}"


def per_stage(led: dict) -> str:
    return ", ".join(f"{stage} {n} ({usd(cost)})" for stage, (n, cost) in sorted(led["per_stage"].items()))


def line(item: str, led: dict, bill: float, bill_name: str, e: Env, pages: int, exit_code, extra: str) -> dict:
    diff = led["total"] - bill
    text = (f"{item}: ledger {usd(led['total'])} vs bill ({bill_name}) {usd(bill)}: difference {diff:+.9f}"
            f" | calls {led['calls']} {led['statuses']}, by stage {per_stage(led)} | pages {pages_summary(e, pages)}"
            f" | exit {exit_code} | ledger schema {e.schema} -> {led['schema']} | {extra}")
    print(text, flush=True)
    return {"item": item, "ledger": led["total"], "bill": bill, "difference": diff, "exit": exit_code,
            "calls": led["calls"], "statuses": led["statuses"], "extra": extra}


def item1(ar: Path, pages: int) -> dict:
    """A stream cut before its first data chunk, SIGKILL, the provider bills the abandoned calls."""
    with server("--processing-ms", "4000", "--bill-abandoned") as srv:
        e = Env(ar, srv, pages)
        try:
            proc = e.start("process", BOOK)
            deadline, pending = time.monotonic() + 60, 0
            while time.monotonic() < deadline and not pending:
                if e.db.exists():
                    try:
                        pending = e.query("SELECT COUNT(*) FROM calls WHERE status = 'pending'")[0][0]
                    except sqlite3.OperationalError:
                        pending = 0
                time.sleep(0.05)
            time.sleep(1.0)  # the headers (and the generation's id) reach ar; the provider thinks 4 s
            at_kill = e.query("SELECT COUNT(*), COUNT(generation_id) FROM calls WHERE status = 'pending'")[0]
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            first = proc.wait(timeout=30)  # -9: killed; anything else: it ended before the kill
            time.sleep(5.0)  # the abandoned generations end on the provider's side, and are billed
            after_kill = (e.ledger()["total"], billed(srv)["credits"])
            r = e.run("process", BOOK)
            led, bill = e.ledger(), billed(srv)
            abandoned = [g for g in bill["generations"] if g["abandoned"]]
            extra = (f"at the kill {at_kill[0]} calls pending, {at_kill[1]} with a generation id; "
                     f"after the kill: ledger {usd(after_kill[0])} vs bill {usd(after_kill[1])}; "
                     f"{len(abandoned)} abandoned generations billed {usd(sum(g['cost'] for g in abandoned))}; "
                     f"2nd run: {last_line(r)}")
            return line("1 cut before the first chunk, SIGKILL", led, bill["credits"], "/credits", e, pages,
                        f"{first} then {r.returncode}", extra)
        finally:
            e.close()


def item2(ar: Path, pages: int) -> dict:
    """OpenAI's strict structured-output mode."""
    with server() as srv:
        e = Env(ar, srv, pages)
        try:
            r = e.run("process", BOOK, "--model", "openai/gpt-4o-mini")
            led, bill = e.ledger(), billed(srv)
            extra = f"400s {bill['requests'].get('400', 0)}; first ledger error: {led['first_error']!r}"
            return line("2 strict schema (openai/gpt-4o-mini)", led, bill["credits"], "/credits", e, pages,
                        r.returncode, extra)
        finally:
            e.close()


def item3(ar: Path, pages: int) -> dict:
    """The provider's reason in a 400."""
    with server("--fail-400", "0.5", "--seed", str(SEED_400)) as srv:
        e = Env(ar, srv, pages)
        try:
            r = e.run("process", BOOK)
            led, bill = e.ledger(), billed(srv)
            failed = e.query("SELECT error FROM pages WHERE status = 'failed' ORDER BY stage, page LIMIT 1")
            extra = (f"400s {bill['requests'].get('400', 0)}; first ledger error (calls): {led['first_error']!r}; "
                     f"a failed page's error (pages): {failed[0][0] if failed else None!r}; "
                     f"output: {last_line(r)!r}")
            return line(f"3 provider's 400 (--fail-400 0.5 --seed {SEED_400})", led, bill["credits"], "/credits",
                        e, pages, r.returncode, extra)
        finally:
            e.close()


def item4(ar: Path, pages: int) -> dict:
    """openrouter/auto at price "-1", under a budget."""
    budget = 0.00001
    with server("--auto-router") as srv:
        e = Env(ar, srv, pages)
        try:
            est = e.run("estimate", BOOK, "--model", "openrouter/auto", "--json")
            try:
                est_json = json.loads(est.stdout)
                estimate = f"estimate low {est_json.get('low_usd')} high {est_json.get('high_usd')}"
                stages = est_json.get("stages", {})
                estimate += " (correct: low {} high {})".format(
                    stages.get("correct", {}).get("low_usd"), stages.get("correct", {}).get("high_usd"))
            except ValueError:
                estimate = f"estimate exit {est.returncode}: {last_line(est)!r}"
            price = e.run("pricing", "openrouter/auto", "--json")
            try:
                auto = json.loads(price.stdout)["models"]["openrouter/auto"]
                priced = f"pricing prompt {auto.get('prompt')} completion {auto.get('completion')}"
            except (ValueError, KeyError, TypeError):
                priced = f"pricing exit {price.returncode}: {last_line(price)!r}"
            r = e.run("process", BOOK, "--model", "openrouter/auto", "--budget", f"{budget:g}")
            led, bill = e.ledger(), billed(srv)
            negative = e.query("SELECT COUNT(*), MIN(computed_cost_usd) FROM calls WHERE computed_cost_usd < 0")[0]
            over = bill["credits"] - budget
            extra = (f"budget {usd(budget)}, bill - budget {over:+.6f} "
                     f"({'OVERSPENT' if over > 1e-12 else 'held'}); {estimate}; {priced}; "
                     f"negative computed costs in the ledger: {negative[0]} (min {negative[1]}); "
                     f"process said: {error_line(r) or last_line(r)!r}")
            return line("4 openrouter/auto ('-1') --budget 0.00001", led, bill["credits"], "/credits", e, pages,
                        r.returncode, extra)
        finally:
            e.close()


def item5(ar: Path, pages: int) -> dict:
    """BYOK: OpenRouter's fee on the key, the provider's bill on the user's own key."""
    with server("--byok") as srv:
        e = Env(ar, srv, pages)
        try:
            r = e.run("process", BOOK)
            led, bill = e.ledger(), billed(srv)
            pays = bill["key_usage"] + bill["byok_usage"]
            extra = (f"/credits (the fee) {usd(bill['credits'])}: ledger - /credits "
                     f"{led['total'] - bill['credits']:+.9f}; /key usage {usd(bill['key_usage'])} + byok_usage "
                     f"{usd(bill['byok_usage'])}; ledger has upstream_cost_usd: {led['upstream_column']}")
            return line("5 BYOK", led, pays, "/key usage + byok_usage", e, pages, r.returncode, extra)
        finally:
            e.close()


def item6(ar: Path, pages: int, reasoning: int, label: str) -> dict:
    """finish_reason length: a reasoning model whose thinking eats max_tokens."""
    model = "google/gemini-2.5-pro"
    with server("--reasoning-tokens", str(reasoning)) as srv:
        e = Env(ar, srv, pages)
        try:
            r = e.run("process", BOOK, "--model", model)
            led, bill = e.ledger(), billed(srv)
            correct = [g for g in bill["generations"] if g["model"] == model]
            time.sleep(0.5)  # /generation knows a generation 0.3 s after it ends
            cut = sum(1 for g in correct if _finish(srv, g["id"]) == "length")
            n, cost = led["per_stage"].get("correct", (0, 0.0))
            extra = (f"correct stage: {n} calls {usd(cost)} in the ledger, {len(correct)} generations "
                     f"{usd(sum(g['cost'] for g in correct))} billed, {cut} of them cut (length); "
                     f"pages flagged (OCR text kept): {e.flagged()}; "
                     f"first ledger error: {led['first_error']!r}")
            return line(f"6{label} length (--reasoning-tokens {reasoning}, {model})", led, bill["credits"],
                        "/credits", e, pages, r.returncode, extra)
        finally:
            e.close()


def _finish(srv: Sim, generation_id: str) -> str | None:
    r = httpx.get(f"{srv.url}/generation", params={"id": generation_id},
                  headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    return r.json()["data"]["finish_reason"] if r.status_code == 200 else None


PRICING_SCRIPT = textwrap.dedent("""
    import json, sys
    from infra.pricing import CostCalculator, PricingCache, Usage
    model, prompt, completion = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    costs = CostCalculator(PricingCache(sys.argv[4]))
    print(json.dumps({"cost": costs.cost(model, Usage(prompt_tokens=prompt, completion_tokens=completion)),
                      "worst_case": costs.worst_case(model, prompt, completion)}))
""")


def item7(ar: Path, pages: int) -> dict:
    """Long-context prices: what the ar computes for a 250,000-token prompt, against the server."""
    from tools.openrouter_sim import BY_ID, bill as server_bill

    model, prompt, completion = "anthropic/claude-sonnet-4.5", 250_000, 1_000
    with server() as srv:
        e = Env(ar, srv, pages)
        try:
            r = subprocess.run([sys.executable, "-c", PRICING_SCRIPT, model, str(prompt), str(completion), srv.url],
                               cwd=ar, capture_output=True, text=True, timeout=60,
                               env={**e.env, "PYTHONPATH": str(ar)})
            computed = json.loads(r.stdout) if r.returncode == 0 else {"cost": None, "worst_case": None}
            listed = e.run("pricing", model, "--json")
            try:
                overrides = json.loads(listed.stdout)["models"][model].get("overrides", "(no such field)")
            except (ValueError, KeyError, TypeError):
                overrides = f"pricing exit {listed.returncode}"
            billed = server_bill(BY_ID[model], prompt, 0, 0, completion, 0, 0)
            flat = server_bill({"pricing": {k: v for k, v in BY_ID[model]["pricing"].items() if k != "overrides"}},
                               prompt, 0, 0, completion, 0, 0)
            page_chars = max(len(page_text(p)) for p in range(1, pages + 1))
            diff = None if computed["cost"] is None else computed["cost"] - billed
            text = (f"7 long-context price ({model}, {prompt:,} prompt + {completion:,} completion tokens): "
                    f"ar computes {usd(computed['cost'])}, the server bills {usd(billed)} "
                    f"(difference {'-' if diff is None else f'{diff:+.6f}'}; at the base price it would be "
                    f"{usd(flat)}); ar's worst case for it {usd(computed['worst_case'])}; "
                    f"`pricing --json` overrides: {json.dumps(overrides)}; "
                    f"a page's text is at most {page_chars:,} characters (about {page_chars // 4:,} tokens; "
                    f"fix sends two texts of a page), far below 200,000 tokens: no run reaches the override, "
                    f"and the ledger takes the provider's cost either way" + ("" if r.returncode == 0 else f"; pricing code failed: {r.stderr.strip()[-200:]}"))
            print(text, flush=True)
            return {"item": "7", "computed": computed, "billed": billed, "flat": flat}
        finally:
            e.close()


ITEMS = {
    "1": item1, "2": item2, "3": item3, "4": item4, "5": item5,
    "6a": lambda ar, pages: item6(ar, pages, 1500, "a"),
    "6b": lambda ar, pages: item6(ar, pages, 4000, "b"),
    "7": item7,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.real_openrouter", description=__doc__.split("\n\n")[0])
    p.add_argument("--ar", type=Path, default=ROOT, help="the checkout whose ar.py to run (default: this one)")
    p.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated, of {','.join(ITEMS)}")
    p.add_argument("--pages", type=int, default=4, help="pages of each book (3 to 5)")
    p.add_argument("--ledger-by", type=Path, metavar="PATH",
                   help="the checkout whose Ledger writes each book's ledger (default: --ar's); "
                        "e.g. an older one, to have a newer ar migrate it")
    args = p.parse_args(argv)
    ar = args.ar.resolve()
    Env.ledger_by = args.ledger_by.resolve() if args.ledger_by else None
    if not (ar / "ar.py").is_file():
        p.error(f"{ar}: no ar.py there")
    commit = subprocess.run(["git", "-C", str(ar), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    print(f"ar at commit {commit}; the local server of commit "
          f"{subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}",
          flush=True)
    results = []
    for name in args.items.split(","):
        try:
            results.append(ITEMS[name](ar, args.pages))
        except Exception as ex:  # one item's failure is a figure too; the others still run
            print(f"{name}: could not be run: {type(ex).__name__}: {ex}", flush=True)
    new_bugs = [r for r in results if "difference" in r and abs(r["difference"]) > 1e-9]
    print(f"items where the ledger differs from the bill: {[r['item'] for r in new_bugs] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
