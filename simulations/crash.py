"""The CLI's last resort: an unexpected exception (a bug, not a user error) becomes one line
on stderr and a saved traceback file, exit code 1; ``fednas --debug`` (or ``FEDNAS_DEBUG=1``)
prints the traceback inline instead. The file is ``traceback.txt`` in the run dir this
process opened last (:func:`note_run_dir`), or a ``fednas-traceback-*.txt`` temp file when
the error came before any run dir."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path

#: Exit code of an unexpected error (user errors exit 2, see :mod:`simulations.cli`).
BUG_EXIT = 1

_RUN_DIRS: list[Path] = []  # the run dirs this process opened, newest last


def note_run_dir(path: Path) -> None:
    """Remember ``path`` as the run dir a later traceback belongs in."""
    _RUN_DIRS.append(Path(path))


def debug_enabled(flag: bool) -> bool:
    """Whether tracebacks go inline: ``--debug`` or ``FEDNAS_DEBUG`` set to a true value."""
    env = os.environ.get("FEDNAS_DEBUG", "").strip().lower()
    return flag or env not in ("", "0", "false", "no", "off")


def save_traceback(exc: BaseException, argv: list[str] | None = None) -> Path | None:
    """Write the traceback of ``exc`` (and the command line) to ``traceback.txt`` in the last
    noted run dir, else to a new ``fednas-traceback-*.txt`` file in the system temp dir; its
    path, or None if neither can be written."""
    text = "".join(traceback.format_exception(exc))
    command = " ".join(argv if argv is not None else sys.argv[1:])
    body = f"fednas {command}\n\n{text}"
    if _RUN_DIRS and _RUN_DIRS[-1].is_dir():
        try:
            path = _RUN_DIRS[-1] / "traceback.txt"
            path.write_text(body)
            return path
        except OSError:
            pass  # an unwritable run dir: fall back to a temp file
    try:
        fd, name = tempfile.mkstemp(prefix="fednas-traceback-", suffix=".txt", text=True)
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
    except OSError:
        return None
    return Path(name)


def report_bug(exc: BaseException, debug: bool, argv: list[str] | None = None) -> int:
    """Tell the user about an unexpected ``exc``; return :data:`BUG_EXIT`.

    One line on stderr naming the exception and the saved traceback file, or (``debug``, or
    when no file can be written) the traceback itself followed by that line.
    """
    summary = " ".join(str(exc).split())
    summary = f"{type(exc).__name__}: {summary}" if summary else type(exc).__name__
    if len(summary) > 300:
        summary = summary[:297] + "..."
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
        print(f"fednas: internal error: {summary}", file=sys.stderr)
        return BUG_EXIT
    path = save_traceback(exc, argv)
    if path is None:  # nowhere to save it: show it rather than lose it
        traceback.print_exception(exc, file=sys.stderr)
        print(f"fednas: internal error (a bug): {summary}", file=sys.stderr)
        return BUG_EXIT
    print(f"fednas: internal error (a bug): {summary}; traceback saved to {path} (rerun "
          "with --debug to print it)", file=sys.stderr)
    return BUG_EXIT
