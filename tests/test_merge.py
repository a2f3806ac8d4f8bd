"""The layout and the merge on typeset pages (tests/typeset.py): every deletion and invention
issue 13 found in the merge that went by text patterns, and the structure it lacked."""
import copy

from pipeline.layout import analyse
from pipeline.merge import book_markdown, build, markdown, plain_text, title_and_author
from tests.typeset import Page, book

PROSE = ["The library opened at nine, and the first visitor was always the",
         "same man, who came in from the square with his umbrella and his"]


def merged(pages: dict[int, dict], texts: dict[int, str] | None = None) -> str:
    texts = texts or {p: ocr["text"] for p, ocr in pages.items()}
    return book_markdown([texts[p] for p in sorted(texts)], analyse(pages))


def novel(first_lines: list[str], n: int = 4, bottom: bool = True) -> list[Page]:
    """Pages of a novel: alternating running headers, folios 11.., prose, given first lines."""
    pages = []
    for i in range(n):
        p = Page().header("THE QUIET SHELF" if i % 2 == 0 else "A Village Library")
        if not bottom:
            p = Page().folio(str(11 + i), bottom=False)
        if first_lines[i]:
            p.body(first_lines[i])
        p.body(PROSE[0]).body(PROSE[1]).body(f"umbrella on page {i}, and sat down.", short=True)
        if bottom:
            p.folio(str(11 + i))
        pages.append(p)
    return pages


def test_running_headers_and_folios_go_and_each_removal_is_recorded():
    layouts = analyse(book(*novel(["", "", "", ""])))
    md = markdown(build(layouts, {ly.page: "\n".join(ln.text for ln in ly.lines) for ly in layouts}))
    assert "THE QUIET SHELF" not in md and "A Village Library" not in md
    assert not any(f"{n}\n" in md.replace("<!-- page", "") for n in (11, 12, 13, 14))
    assert [ly.printed for ly in layouts] == ["11", "12", "13", "14"]
    removed = [[(ln.label, ln.text) for ln in ly.lines if ln.label in ("header", "folio")] for ly in layouts]
    assert removed[0] == [("header", "THE QUIET SHELF"), ("folio", "11")]
    assert all(ln.why for ly in layouts for ln in ly.lines if ln.label in ("header", "folio"))


def test_chapter_headings_at_page_tops_are_kept_as_headings():
    pages = []
    for n in range(1, 5):
        pages.append(Page().heading(f"CHAPTER {n}").body(PROSE[0], indent=True).body(PROSE[1])
                     .body("and so it went on.", short=True).folio(str(n + 2)))
    md = merged(book(*pages))
    for n in range(1, 5):
        assert f"\n# CHAPTER {n}\n" in md


def test_a_lone_roman_section_number_is_not_a_page_number():
    pages = novel(["", "", "", ""])
    pages[2] = Page().header("THE QUIET SHELF").centred("II").body(PROSE[0], indent=True).body(PROSE[1]).folio("13")
    md = merged(book(*pages))
    assert "\nII\n" in md or "# II\n" in md
    # nor two sections opening pages in a row, numbered in step with the scan
    pages = [Page().centred(numeral).body(PROSE[0], indent=True).body(PROSE[1]).folio(str(n))
             for n, numeral in ((1, "i"), (2, "ii"), (3, "II"), (4, "III"), (5, "5"))]
    md = merged(book(*pages))
    assert ("\nII\n" in md or "# II\n" in md) and ("\nIII\n" in md or "# III\n" in md)


def test_words_that_read_as_roman_numerals_stay():
    first = Page().header("THE QUIET SHELF").body(PROSE[0], indent=True).body(
        "He had promised to come, and so he").body("did.", short=True).folio("11")
    second = Page().header("A Village Library").body("Mill was the name of the town, and", indent=True).body(
        PROSE[1]).folio("12")
    third = Page().header("THE QUIET SHELF").body(PROSE[0], indent=True).body("the end.", short=True).folio("13")
    md = merged(book(first, second, third))
    assert "so he did." in md and "Mill was the name of the town" in md


def test_yes_at_the_top_of_two_pages_is_dialogue_not_a_header():
    md = merged(book(*novel(["Yes.", "", "Yes.", ""])))
    assert md.count("Yes.") == 2
    # even where paragraphs are set with space between them, so that "Yes." stands apart
    pages = [Page().body("Yes.", short=True)._space(2 * 30).body(PROSE[0]).body(PROSE[1]).folio(str(n))
             for n in (1, 2)]
    assert merged(book(*pages)).count("Yes.") == 2


def test_chart_axis_labels_are_not_page_numbers():
    chart = Page().body("600", short=True).body("Sales by year, in copies", short=True).body("100", short=True)
    md = merged(book(*novel(["", "", "", ""]), chart))
    assert "600" in md and "100" in md


def test_body_lines_starting_like_headings_are_not_headings():
    pages = novel(["Part of the reason he left", "Book-keeping was his trade,", "", ""])
    md = merged(book(*pages))
    assert "# Part" not in md and "# Book" not in md
    assert "Part of the reason he left" in md and "Book-keeping was his trade," in md


def test_a_line_starting_in_lower_case_is_never_a_heading():
    page = Page().body("said the keeper, and the one who listened nodded:").centred(
        "book, he said, is a machine for keeping sheets of").body(PROSE[0]).body(PROSE[1])
    md = merged(book(page))
    assert "# book" not in md and "book, he said, is a machine" in md


def test_a_paragraph_goes_on_across_a_page_with_a_capitalised_start_and_a_footnote_between():
    first = (Page().header("THE QUIET SHELF").body(PROSE[0], indent=True)
             .body("same man, who read the papers1 and talked of").footnote("1 He had been a sailor.").folio("11"))
    second = Page().header("THE QUIET SHELF").body("Mr Brown, the keeper.", short=True).body(
        PROSE[0], indent=True).body("end.", short=True).folio("12")
    third = Page().header("THE QUIET SHELF").body(PROSE[0], indent=True).body("end.", short=True).folio("13")
    md = merged(book(first, second, third))
    assert "who read the papers[^1] and talked of <!-- page 2 --> Mr Brown, the keeper." in md
    assert "[^1]: He had been a sailor." in md


def test_the_page_marker_stands_inline_where_the_page_breaks():
    first = Page().body(PROSE[0], indent=True).body("same man, who read the papers in the win-").folio("1")
    second = Page().body("dow seat. Nobody knew his name.", short=True).body(PROSE[0], indent=True).folio("2")
    md = merged(book(first, second))
    assert "who read the papers in the window <!-- page 2 --> seat. Nobody knew his name." in md
    assert md.startswith("<!-- page 1 -->\n\n")


def test_a_real_compound_hyphen_at_a_page_end_is_kept():
    first = Page().body("It was well said, and known to all of them, that a", indent=True).body(
        "man so well-").folio("1")
    second = Page().body("known in the town would come.", short=True).folio("2")
    md = merged(book(first, second))
    assert "so well-known <!-- page 2 --> in the town" in md


def test_a_compound_of_three_parts_split_at_its_first_hyphen_keeps_it():
    """"five-" / "and-twentieth", and "five" printed nowhere else in the book."""
    md = merged(book(Page().body("Mrs. Southcott had recently attained her five-", indent=True)
                     .body("and-twentieth blessed birthday, of whom a prophet spoke.", short=True).folio("1")))
    assert "her five-and-twentieth blessed" in md


def test_verse_lists_and_contents_keep_their_lines():
    page = (Page().body("He sang:", short=True).verse("The wind is in the willow,").verse("The rain is on the hill,")
            .verse("And all the roads run homeward").body(PROSE[0], indent=True))
    md = merged(book(page))
    assert "The wind is in the willow,\\\nThe rain is on the hill,\\\nAnd all the roads run homeward" in md
    contents = Page().centred("CONTENTS").body("The Quiet Shelf ........ 1", short=True).body(
        "A Village Library ........ 9", short=True).body("The Keeper ........ 17", short=True)
    layouts = analyse(book(contents))
    md = markdown(build(layouts, {1: contents.ocr()["text"]}))
    assert "The Quiet Shelf ........ 1\\\nA Village Library ........ 9" in md
    assert layouts[0].toc[1] == {"title": "A Village Library", "printed": "9"}
    items = Page().body("He took with him:", short=True).body("1. a coat;", short=True).body("2. a hat.", short=True)
    assert "1. a coat;\n2. a hat." in merged(book(items))


def test_footnotes_are_kept_apart_with_their_marker():
    page = (Page().body("The keeper was a sailor1 once, and he", indent=True).body("said so.", short=True)
            .footnote("1 He sailed on the Mary Rose.").folio("3"))
    pages = book(page, Page().body(PROSE[0], indent=True).folio("4"))
    made = build(analyse(pages), {p: o["text"] for p, o in pages.items()})
    md = markdown(made)
    assert "a sailor[^1] once" in md and md.rstrip().endswith("[^1]: He sailed on the Mary Rose.")
    assert "sailor[1] once" in plain_text(made)


def test_a_corrected_page_keeps_its_labels_and_unsure_lines_are_kept():
    pages = book(*novel(["", "", "", ""]))
    texts = {p: o["text"] for p, o in pages.items()}
    texts[1] = texts[1].replace("The library", "Tbe library") + "\n\nA line the OCR did not have."
    texts[2] = texts[2].replace("A Village Library", "A Vilage Library")
    md = merged(pages, texts)
    assert "A line the OCR did not have." in md and "Tbe library" in md
    assert "Vilage" not in md  # still the header, near enough


def test_a_folio_the_model_corrected_into_another_number_is_still_the_folio():
    """A local model "corrected" the folio ii into li: too unlike its OCR line to be sure by
    likeness, yet still a number alone on the folio's line, so not body text."""
    pages = book(*novel(["", "", "", ""]))
    texts = {p: o["text"] for p, o in pages.items()}
    texts[2] = texts[2].replace("\n12", "\n17")
    texts[3] = texts[3].replace("\n13", "\nIN")  # not a number's shape: kept, unsure
    md = merged(pages, texts)
    assert "17" not in md and "\nIN\n" in md


def test_numbers_read_again_in_the_margins_map_pages_only_in_step_with_the_scan():
    """The OCR's second reading of the margins (ocr JSON `margins`) is folio evidence under the
    same rule as a folio line: "2" and "4" on scans 3 and 5 map them (and scan 4 between, as
    inferred); a chart's "600" read in a margin maps nothing; "ii" read again where the page
    reading had "il" under the contents makes that line the folio (front matter counted from
    the first leaf), and it leaves the text; the margin's words never enter it."""
    pages = book(Page().heading("THE OLD TIMES"),
                 Page().heading("CONTENTS").body("Chapter I. The Period ........ 1").body("il", short=True),
                 *[Page().body(PROSE[0], indent=True).body(PROSE[1]).body(f"and so on, page {n}.", short=True)
                   for n in range(3, 7)])
    def margin(text, top=60, confidence=90.0):
        return [{"band": "top", "text": text, "confidence": confidence, "bbox": [100, top, 20, 25]}]
    il = pages[2]["blocks"][-1]["lines"][-1]["bbox"]
    pages[2]["margins"] = [{"band": "bottom", "text": "ii", "confidence": 50.0, "bbox": list(il)}]
    pages[3]["margins"] = margin("2")
    pages[5]["margins"] = margin("4")
    pages[6]["margins"] = margin("600")
    layouts = analyse(pages)
    assert [ly.printed for ly in layouts] == [None, "ii", "2", "3", "4", "5"]
    assert [ly.printed_margin for ly in layouts] == [False, True, True, False, True, False]
    assert layouts[5].printed_inferred  # the 600 was no evidence
    md = merged(pages)
    assert "il" not in md.split() and "600" not in md and "\n2\n" not in md


def test_pages_without_geometry_keep_every_line():
    md = book_markdown(["THE QUIET SHELF\n\nSome words.\n\n12", "THE QUIET SHELF\n\nMore words.\n\n13"])
    assert md.count("THE QUIET SHELF") == 2 and "12" in md and "13" in md


def test_merge_is_deterministic():
    pages = book(*novel(["", "Yes.", "", ""]))
    assert merged(pages) == merged(copy.deepcopy(pages))


def test_a_body_size_chapter_line_in_step_with_the_scan_is_kept_and_a_numbered_header_goes():
    pages = [Page().body(PROSE[0], indent=True).body("end.", short=True).folio("1")]
    pages += [Page().body(f"Chapter {n}", short=True)._space(60).body(PROSE[0], indent=True).body(PROSE[1])
              .folio(str(n)) for n in (2, 3, 4)]
    md = merged(book(*pages))
    assert all(f"Chapter {n}" in md for n in (2, 3, 4))
    numbered = [Page().header(f"{n}  THE PERIOD" if n % 2 == 0 else f"THE WINE-SHOP  {n}")
                .body(PROSE[0], indent=True).body(PROSE[1]) for n in (6, 7, 8)]
    layouts = analyse(book(*numbered))
    assert [ly.printed for ly in layouts] == ["6", "7", "8"]
    assert [ly.lines[0].label for ly in layouts] == ["header"] * 3


def test_title_and_author_come_from_evidence_not_the_first_heading():
    title_page = Page(top=500).centred("THE QUIET SHELF", size=60).centred("by Anna Baker")
    body = Page().body("By the time I was a child the shelf had become a", indent=True).body(PROSE[0]).body(PROSE[1])
    named = title_and_author(analyse(book(title_page, body, Page().heading("CHAPTER I").body(PROSE[0]))), "b")
    assert (named["title"], named["author"]) == ("THE QUIET SHELF", "Anna Baker")
    # no title page: the running header of the left-hand pages, never a chapter heading
    pages = [Page().heading("Chapter One").body(PROSE[0], indent=True).body(PROSE[1]).folio("1")]
    pages += [Page().header("THE QUIET SHELF" if n % 2 == 0 else "A Village Library").body(PROSE[0]).body(PROSE[1])
              .folio(str(n)) for n in (2, 3, 4, 5)]
    named = title_and_author(analyse(book(*pages)), "b")
    assert (named["title"], named["author"]) == ("The Quiet Shelf", None)
