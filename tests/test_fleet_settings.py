"""Fleet settings a new user gets wrong (AR_LEDGER, AR_EXECUTOR=ray), each through the real
`ar.py`: one line that says what and where, the exit code it deserves, never the database's
password, never a traceback."""
from pathlib import Path

import pytest

from infra.pg_url import describe, mask
from tests.conftest import make_book, one_error_line, run_ar, text_pages
from tests.test_fleet import query

PASSWORD = "sekret-42"

# Every form libpq takes a password in, and what ar says of each address
LEDGERS = [
    # a scheme that is not PostgreSQL's: said before psycopg is asked (its message repeats the address)
    (f"mysql://ar:{PASSWORD}@127.0.0.1/ar", 2, "must be a postgresql:// URL"),
    (f"postgresql://ar@127.0.0.1/ar?password={PASSWORD}&host=nohost.invalid", 1, "cannot be reached"),
    (f"host=nohost.invalid password={PASSWORD}", 1, "cannot be reached"),
    (f"host=nohost.invalid password='{PASSWORD}' nonsense", 1, 'missing "=" after "nonsense"'),
    # libpq would end the password at its first '@' and try to resolve the rest as the host
    ("postgresql://ar:p@ss@127.0.0.1/ar", 2, "must be written %40"),
]


@pytest.mark.parametrize("url, secrets", [
    ("postgresql://ar:p%40ss@127.0.0.1/ar", ["p%40ss", "p@ss"]),  # as written, and as libpq reads it
    (f"host=h password='{PASSWORD}'", [PASSWORD]),
    (f"postgresql://ar@h/ar?sslmode=disable&password={PASSWORD}", [PASSWORD])])
def test_the_password_is_masked_in_the_address_and_wherever_a_message_repeats_it(url, secrets):
    for secret in secrets:
        assert secret not in describe(url) and "***" in describe(url)
        assert secret not in mask(f'invalid connection string "{url}" ({secret})', url)


def test_a_ledger_address_never_shows_its_password(books_dir: Path):
    make_book(books_dir, "b", 1)
    for url, code, says in LEDGERS:
        r = run_ar("status", "b", "--ledger", url, books_dir=books_dir, timeout=60)
        line = one_error_line(r, says)
        assert r.returncode == code, (url, line)
        assert PASSWORD not in r.stdout + r.stderr and "p@ss" not in line and "ss@127" not in line, line
    for args in (("monitor",), ("monitor", "b")):  # a live view does not wait on an address that can never work
        r = run_ar(*args, "--ledger", LEDGERS[0][0], books_dir=books_dir, timeout=30)
        one_error_line(r, "must be a postgresql:// URL")
        assert r.returncode == 2 and PASSWORD not in r.stdout + r.stderr


BLOCKER = '''import os, sys

class Absent:  # these modules are not installed, as in an environment without ar's fleet extra
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in os.environ["AR_TEST_ABSENT"].split(","):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Absent())
'''


def test_without_the_fleet_extra_a_fleet_setting_is_one_line_naming_it(books_dir: Path, tmp_path: Path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    make_book(books_dir, "b", 1)
    absent = {"PYTHONPATH": str(tmp_path / "site"), "AR_TEST_ABSENT": "psycopg,ray"}
    for args, env, needs in [
            (("status", "b", "--ledger", "postgresql://ar@127.0.0.1/ar"), {}, "AR_LEDGER needs the fleet extra"),
            (("process", "b"), {"AR_LEDGER": "postgresql://ar@127.0.0.1/ar"}, "AR_LEDGER needs the fleet extra"),
            (("process", "b", "--stages", "ocr"), {"AR_EXECUTOR": "ray"}, "AR_EXECUTOR=ray needs the fleet extra")]:
        r = run_ar(*args, books_dir=books_dir, env={**absent, **env}, timeout=60)
        assert "pip install 'ar[fleet]'" in one_error_line(r, needs)
        assert r.returncode == 2, r.stderr
    assert not (books_dir / "b" / "checkpoint.db").exists()  # refused before any run opened


def test_a_run_keeps_the_ledger_password_out_of_its_records_and_logs(books_dir: Path, tmp_path: Path, pg_url):
    """The test server trusts its local connections: the password is given, never asked for."""
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    assert run_ar("add", str(text_pages(tmp_path / "scans", 1)), "--id", "b", books_dir=books_dir,
                  env={"AR_LEDGER": pg_url}).returncode == 0
    r = run_ar("process", "b", "--stages", "ocr", "--ledger", url, books_dir=books_dir, timeout=120)
    assert r.returncode == 0, r.stderr
    (command,), = query(pg_url, "SELECT command FROM runs WHERE book = 'b'")
    assert "--ledger 'postgresql://postgres:***@/" in command  # the run's command, as kept in the ledger
    assert PASSWORD not in r.stdout + r.stderr + str(query(pg_url, "SELECT * FROM runs"))
    logs = list((books_dir / "b" / "logs").glob("*.jsonl"))
    assert logs and not any(PASSWORD in log.read_text() for log in logs)
