"""The fleet's ledger address (AR_LEDGER or `--ledger`) as ar checks it and shows it: never its
password, in whichever form libpq takes it (postgresql://user:PASSWORD@host/db,
postgresql://user@host/db?password=PASSWORD, or key=value settings: host=... password=...).
It needs no psycopg: a message about an address that psycopg cannot read, or without psycopg
installed, masks the password too."""
from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from infra.errors import UsageError

SCHEMES = ("postgresql", "postgres")  # what libpq takes as a URL
# A password where libpq reads one (the URL's user:PASSWORD@, a `password=` setting of the
# URL's query or of key=value settings, quoted or not): found even where the address does not
# parse, so that a message repeating it (libpq's do) is masked too.
_URL_PASSWORD = re.compile(r"(://[^/?#@:]*:)([^/?#]*)(@)")
_SETTING_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&#]+)()", re.IGNORECASE)
_PATTERNS = (_URL_PASSWORD, _SETTING_PASSWORD)


def passwords(url: str) -> list[str]:
    """Every form the address's password is written in (as given, percent-decoded, unquoted,
    as libpq reads it), longest first."""
    found = {m.group(2) for pattern in _PATTERNS for m in pattern.finditer(url)}
    found |= {unquote(p) for p in found} | {p.strip("'") for p in found}
    if not _ambiguous(url):  # libpq would read a part of the password as the host: not that part
        try:
            from psycopg.conninfo import conninfo_to_dict

            found.add(conninfo_to_dict(url).get("password") or "")
        except Exception:  # no psycopg, or an address it cannot parse: what the patterns found
            pass
    return sorted((p for p in found if p), key=len, reverse=True)


def mask(text: str, url: str) -> str:
    """`text` (a message, one of the database's errors) with the password of `url` as ***,
    wherever it is written: in the settings `text` repeats, and as itself."""
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1***\3", text)
    for password in passwords(url):
        text = text.replace(password, "***")
    return text


def describe(url: str) -> str:
    """The address as it may be shown: without its password."""
    return mask(url, url)


def _ambiguous(url: str) -> bool:
    """An '@' of the user or password not written %40: libpq ends the password at the first."""
    return "://" in url and urlsplit(url).netloc.count("@") > 1


def check(url: str) -> None:
    """An address that cannot be a PostgreSQL one is said in one line before psycopg is asked
    (libpq's own message repeats it whole, password and all)."""
    scheme, sep, _ = url.partition("://")
    if (sep and scheme.lower() not in SCHEMES) or (not sep and "=" not in url):
        raise UsageError(f"AR_LEDGER (or --ledger) must be a postgresql:// URL "
                         f"(postgresql://user:password@host/dbname) or libpq's key=value settings, "
                         f"not {describe(url)!r}")
    if _ambiguous(url):
        raise UsageError(f"AR_LEDGER (or --ledger) {describe(url)}: an '@' in the user or the password "
                         "must be written %40 (postgresql://user:p%40ss@host/dbname)")
