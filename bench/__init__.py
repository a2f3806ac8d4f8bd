"""Benchmarks: run one as `.venv/bin/python -m bench.<name>`; its last line sums it up."""
