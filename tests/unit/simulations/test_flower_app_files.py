"""The Flower app that ``flwr run .`` packs from this repo: its files pass Flower's publish
rules (at most 10 directory levels, 1000 files, 10 MB) and leave out the benchmark records,
which grow with every benchmark run (the root ``.gitignore`` keeps them out; git keeps them
through ``bench/results/.gitignore``)."""

from __future__ import annotations

from conftest import REPO
from flwr.cli.utils import collect_files, filter_paths_for_publish
from flwr.supercore.constant import MAX_FILE_COUNT, MAX_TOTAL_BYTES


def test_the_app_leaves_out_bench_records_and_fits_flowers_limits():
    files = {p: f for p, f in collect_files(REPO).items()
             if not p.startswith((".venv/", "runs/"))}  # local, ignored by the root .gitignore
    files[".gitignore"] = REPO / ".gitignore"
    app = filter_paths_for_publish(files)  # raises on a path deeper than 10 levels
    assert "pyproject.toml" in app and "simulations/server_app.py" in app
    assert not [p for p in app if p.startswith("bench/results/")]
    assert len(app) < MAX_FILE_COUNT
    assert sum(f.stat().st_size for f in app.values()) < MAX_TOTAL_BYTES
