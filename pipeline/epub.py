"""An EPUB 3 container from XHTML documents: the few files EPUB needs, written here.

Written rather than taken from a library: ebooklib (the one kept Python library) pulls in
lxml and gives each book a random identifier, where ar's is a digest of the text (the same
pages, the same book); and the files EPUB needs are few and short. epubcheck validates the
result in the tests (tests/test_epub.py).
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from html import escape

LANGUAGES = {"eng": "en", "fra": "fr", "deu": "de", "spa": "es", "ita": "it", "por": "pt", "nld": "nl",
             "lat": "la", "rus": "ru", "pol": "pl", "swe": "sv", "dan": "da", "nor": "no", "fin": "fi"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the zip entries' dates: only dcterms:modified says when


@dataclass
class Document:
    name: str  # file name in the book, e.g. "c001.xhtml"
    title: str
    body: str  # XHTML of the body's content
    in_toc: bool = True


@dataclass
class PageTarget:
    document: str
    anchor: str
    label: str  # the printed page number (or the scan page's)


def language(tesseract_langs: str) -> str:
    return LANGUAGES.get(tesseract_langs.split("+")[0], "und")


def xhtml(title: str, body: str, lang: str) -> str:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
            f'<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops" '
            f'lang="{lang}" xml:lang="{lang}">\n<head><title>{escape(title)}</title></head>\n'
            f'<body>\n{body}\n</body>\n</html>\n')


def _nav(docs: list[Document], pages: list[PageTarget], lang: str) -> str:
    toc = "\n".join(f'<li><a href="{d.name}">{escape(d.title)}</a></li>' for d in docs if d.in_toc)
    body = f'<nav epub:type="toc" id="toc"><h1>Contents</h1><ol>\n{toc}\n</ol></nav>\n'
    if pages:
        items = "\n".join(f'<li><a href="{p.document}#{p.anchor}">{escape(p.label)}</a></li>' for p in pages)
        body += f'<nav epub:type="page-list" hidden=""><h1>Pages</h1><ol>\n{items}\n</ol></nav>'
    return xhtml("Contents", body, lang)


def _opf(docs: list[Document], title: str, author: str | None, lang: str, identifier: str, modified: str) -> str:
    manifest = "\n".join(f'<item id="d{i}" href="{d.name}" media-type="application/xhtml+xml"/>'
                         for i, d in enumerate(docs))
    spine = "\n".join(f'<itemref idref="d{i}"/>' for i in range(len(docs)))
    creator = f"<dc:creator>{escape(author)}</dc:creator>\n" if author else ""
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">\n'
            '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
            f'<dc:identifier id="id">urn:sha1:{identifier}</dc:identifier>\n'
            f"<dc:title>{escape(title)}</dc:title>\n{creator}<dc:language>{lang}</dc:language>\n"
            f'<meta property="dcterms:modified">{modified}</meta>\n</metadata>\n'
            '<manifest>\n<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>\n'
            f"{manifest}\n</manifest>\n<spine>\n{spine}\n</spine>\n</package>\n")


CONTAINER = ('<?xml version="1.0" encoding="utf-8"?>\n'
             '<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">\n'
             '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
             '</rootfiles>\n</container>\n')


def package(docs: list[Document], pages: list[PageTarget], title: str, author: str | None, lang: str,
            modified: str) -> bytes:
    """The .epub's bytes. Its identifier is a digest of its text: the same book, the same id.
    `modified` (dcterms:modified, required by EPUB 3) is given by the caller."""
    identifier = hashlib.sha1("".join(d.body for d in docs).encode()).hexdigest()
    files = {"META-INF/container.xml": CONTAINER,
             "OEBPS/content.opf": _opf(docs, title, author, lang, identifier, modified),
             "OEBPS/nav.xhtml": _nav(docs, pages, lang)}
    files.update({f"OEBPS/{d.name}": xhtml(d.title, d.body, lang) for d in docs})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype", FIXED_TIME), "application/epub+zip", zipfile.ZIP_STORED)
        for name, text in files.items():
            z.writestr(zipfile.ZipInfo(name, FIXED_TIME), text.encode(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
