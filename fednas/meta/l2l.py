"""The one place learn2learn is imported (by :mod:`fednas.meta.learners` and
:mod:`fednas.meta.task_sampler`,
themselves imported lazily: the rest of fednas runs without learn2learn loaded)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

log = logging.getLogger(__name__)


def _import_learn2learn():
    """Import learn2learn without gym's import-time notice (kept at DEBUG level)."""
    notice = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(notice):
            warnings.simplefilter("ignore")
            import learn2learn
    except ImportError as exc:
        raise ImportError("the meta phase needs learn2learn 0.2.0; install it with "
                          "scripts/install.sh (see docs: re-Cythonised, without qpth)") from exc
    if notice.getvalue():
        log.debug("learn2learn import said: %s", notice.getvalue().strip())
    return learn2learn


l2l = _import_learn2learn()
