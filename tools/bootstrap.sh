#!/usr/bin/env bash
# Installs what ar needs on a fresh Debian machine: system tools (Tesseract with its English,
# orientation (osd) and French language data, tmux, epubcheck to validate book.epub in the
# tests, PostgreSQL for the fleet's tests), then a virtual environment with the project, its
# test dependencies, the local server's (the `sim` extra) and the fleet's (the `fleet` extra:
# psycopg, Ray).
set -euo pipefail
venv=${1:-.venv}
langs=(eng osd fra)  # Tesseract's traineddata files, each from the package tesseract-ocr-LANG

missing_langs() {  # the languages of $langs that `tesseract --list-langs` does not list
    local have=""
    command -v tesseract >/dev/null && have=$(tesseract --list-langs 2>&1 || true)
    for lang in "${langs[@]}"; do
        grep -qx "$lang" <<<"$have" || echo "$lang"
    done
}

need=()
command -v tesseract >/dev/null || need+=(tesseract-ocr)
for lang in $(missing_langs); do need+=("tesseract-ocr-$lang"); done
command -v tmux >/dev/null || need+=(tmux)
command -v epubcheck >/dev/null || need+=(epubcheck)  # a jar: brings a Java runtime with it
# the tests start their own server (tests/pgserver.py) with initdb and pg_ctl
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing system packages: ${need[*]}"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    still=$(missing_langs | tr '\n' ' ')
    if [ -n "$still" ]; then
        echo "bootstrap: tesseract --list-langs still lacks: $still(is TESSDATA_PREFIX set elsewhere?)" >&2
        exit 1
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv"
    python3 -m venv "$venv"
fi
echo "bootstrap: installing the project into $venv"
"$venv/bin/pip" install -q -e '.[test,sim,fleet]'
