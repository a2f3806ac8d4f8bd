from pipeline.merge import book_markdown, paragraphs, strip_furniture, title_of

PAGES = [
    "THE QUIET SHELF\n\nChapter One\n\nThe library opened at nine, and the first\nvisitor was always the same man, who read\n\n12",
    "A Village Library\n\nthe papers in the win-\ndow seat. Nobody knew his name.\n\nHe came in the rain, and he came in the sun-\n\n13",
    "THE QUIET SHELF\n\nshine, and he never borrowed a book.\n\n14",
    "A Village Library\n\nOne day he did.\n\n15",
]


def test_page_numbers_and_running_headers_go():
    cleaned = [" ".join(l for l in lines if l.strip()) for lines in strip_furniture(PAGES)]
    assert "12" not in cleaned[0] and "13" not in cleaned[1]
    assert "THE QUIET SHELF" not in cleaned[0] and "THE QUIET SHELF" not in cleaned[2]
    assert "A Village Library" not in cleaned[1] and "A Village Library" not in cleaned[3]
    assert cleaned[3] == "One day he did."


def test_a_lone_page_keeps_its_first_line():
    assert strip_furniture(["Preface\n\nSome words.\n\n7"]) == [["Preface", "", "Some words.", ""]]


def test_paragraphs_reflow_and_join_hyphenated_words():
    assert paragraphs(["in the win-", "dow seat.", "", "Next one."]) == ["in the window seat.", "Next one."]
    assert paragraphs(["well-", "Known"]) == ["well- Known"]  # a capital after '-' is not a split word


def test_book_joins_paragraphs_and_words_across_pages_and_marks_breaks():
    md = book_markdown(PAGES)
    assert md.startswith("<!-- page 1 -->\n\n# Chapter One\n\n")
    assert "who read the papers in the window seat. Nobody knew his name." in md
    assert "in the sunshine, and he never borrowed a book." in md
    for n in range(1, 5):
        assert f"<!-- page {n} -->" in md
    assert md.index("<!-- page 3 -->") < md.index("One day he did.")
    assert "12" not in md and "THE QUIET SHELF" not in md
    assert title_of(md, "fallback") == "Chapter One"


def test_merge_is_deterministic():
    assert book_markdown(PAGES) == book_markdown(list(PAGES))
