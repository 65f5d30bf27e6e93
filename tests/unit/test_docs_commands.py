"""Every ``fednas`` command in a fenced block of README.md and docs/ works as written.

Each command is parsed by the real CLI parser (:func:`simulations.cli_parser.build_parser`); when it
names a scenario file, that file must exist and the scenario, with the command's ``--set``
overrides and every ``--grid`` value, must load (:func:`fednas.config.loading.load_config`
checks every key and value) — a dry run of what the command would start. Commands written
with placeholders (``SCENARIO``, ``RUN_DIR``, ``runs/<name>-<time>``, ``[--opt ...]``) are
only checked for their subcommand and options. ``python`` commands must name existing files.
Relative links in the same pages must resolve to existing files.
"""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import REPO

from fednas.config.loading import load_config
from simulations.cli_parser import build_parser

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
PLACEHOLDER = re.compile(r"[A-Z]{3,}(_[A-Za-z]+)*|<[^>]*>|\[[-a-z]")


def fenced_commands() -> list[tuple[str, str]]:
    """(page, command line) for every command in a fenced block, continuations joined."""
    found = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("fednas run dir:"):  # output shown, not a command
                    continue
                if re.match(r"(\.venv/bin/)?fednas\s|python3?\s|\.venv/bin/python\s", line):
                    found.append((str(page.relative_to(REPO)), line))
    return found


COMMANDS = fenced_commands()


def test_the_pages_show_commands():
    assert len([c for _, c in COMMANDS if "fednas " in c]) >= 20


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_command_works_as_written(page, line):
    argv = shlex.split(line, comments=True)
    program, args = argv[0], argv[1:]
    if not program.endswith("fednas"):
        script = next((a for a in args if a.endswith(".py")), None)
        assert script is None or (REPO / script).is_file(), f"{page}: no file {script}"
        return
    if any(PLACEHOLDER.search(a) for a in args):  # a pattern, not a runnable command
        assert args[0] in build_parser()._subparsers._group_actions[0].choices, line
        return
    parsed = build_parser().parse_args(args)  # SystemExit (argparse error) fails the test
    scenario = getattr(parsed, "scenario", None) or getattr(parsed, "target", None)
    if scenario is None or not str(scenario).endswith(".toml"):
        return
    assert (REPO / scenario).is_file(), f"{page}: no scenario {scenario}"
    overrides = list(getattr(parsed, "overrides", []))
    load_config(REPO / scenario, overrides)
    for spec in getattr(parsed, "grid", []):
        key, values = spec.split("=", 1)
        for value in values.split(","):
            load_config(REPO / scenario, [*overrides, f"{key}={value}"])


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page):
    text = FENCE.sub("", page.read_text())
    broken = [target for target in LINK.findall(text)
              if "://" not in target and not target.startswith("mailto:")
              and not (page.parent / target).exists()]
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"
