"""Flower's log lines that a normal fednas run should not print.

* the notice that ``run_simulation`` is deprecated in favour of ``flwr run``: fednas runs
  in-process on purpose (its ServerApp holds the already validated pipeline); ``flwr run .``
  is supported as well (docs/flwr_run.md);
* ``Manually terminating ClientAppActor``: a WARNING every client actor logs when the
  simulation shuts it down at the end of every run, which is no problem at all. It is logged
  in the actor's process, so the ClientApp installs the filter there too
  (:func:`simulations.client_app.make_client_app`).

Every other record passes.
"""

from __future__ import annotations

import logging

NOTICES = ("`run_simulation` function is deprecated", "Manually terminating ")


class QuietFlowerNotices(logging.Filter):
    """Drops the records of :data:`NOTICES` (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in NOTICES)


def quiet_flower() -> None:
    """Install :class:`QuietFlowerNotices` on Flower's logger of this process (once)."""
    flwr_log = logging.getLogger("flwr")
    if not any(isinstance(f, QuietFlowerNotices) for f in flwr_log.filters):
        flwr_log.addFilter(QuietFlowerNotices())
