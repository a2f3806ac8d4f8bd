#!/usr/bin/env bash
# Installs what ar needs on a fresh Debian machine: system tools (Tesseract, tmux),
# then a virtual environment with the project and its test dependencies.
set -euo pipefail
venv=${1:-.venv}

need=()
command -v tesseract >/dev/null || need+=(tesseract-ocr tesseract-ocr-eng)
command -v tmux >/dev/null || need+=(tmux)
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing system packages: ${need[*]}"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv"
    python3 -m venv "$venv"
fi
echo "bootstrap: installing the project into $venv"
"$venv/bin/pip" install -q -e '.[test,sim]'
