"""Keep Flower's Ray actor pool usable when a worker process dies (flwr 1.41).

fednas creates the simulation's actors restartable (``max_restarts = -1`` in the backend's
client resources, :func:`simulations.simulation.backend_config`): when a worker dies (an
``exit`` fault of ``[federation.faults]``, the OOM killer), Ray starts a new process for the
actor and the message it was running fails. Flower's pool, however, puts the actor back at
once, and a message sent to it while it restarts fails too (``ActorUnavailableError``):
one death would fail a random number of other clients, depending on timing.

:func:`install` wraps ``BasicActorPool.fetch_result_and_return_actor_to_pool`` so that after
a failed message the pool waits until the actor answers again before it takes more work;
only the message that was running when the worker died fails. Idempotent; does nothing when
Flower's code is not the expected one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

_ORIGINAL: dict[str, Any] = {}
RESTART_WAIT_S = 300.0
"""How long to wait for a restarted actor before handing it back anyway."""


def wait_until_alive(actor: Any, timeout: float = RESTART_WAIT_S) -> bool:
    """Block until ``actor`` answers a ping (True) or ``timeout`` passes / it is gone for
    good (False)."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(deadline - time.monotonic(), 0.1))
            return True
        except (ActorUnavailableError, GetTimeoutError):
            time.sleep(0.2)
        except ActorDiedError:
            return False
    return False


def install() -> bool:
    """Patch Flower's actor pool (see the module docstring); False when it cannot."""
    try:
        from flwr.simulation.ray_transport.ray_actor import BasicActorPool
        from ray.exceptions import RayActorError
    except ImportError:  # pragma: no cover - flwr[simulation] is a dependency
        return False
    if "fetch" in _ORIGINAL:
        return True
    original = getattr(BasicActorPool, "fetch_result_and_return_actor_to_pool", None)
    if original is None or not hasattr(BasicActorPool, "add_actor_back_to_pool"):
        log.debug("Flower's BasicActorPool changed; actor restarts are not awaited")
        return False

    def fetch(self: Any, future: Any) -> Any:
        try:
            return original(self, future)
        except RayActorError:
            actor = self._future_to_actor.get(future)
            if actor is not None and not wait_until_alive(actor):
                log.warning("a Ray worker did not come back within %.0f s", RESTART_WAIT_S)
            raise  # Flower reports the message as failed and puts the actor back

    _ORIGINAL["fetch"] = original
    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch
    return True


def uninstall() -> None:
    """Put Flower's own method back."""
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    if "fetch" in _ORIGINAL:
        BasicActorPool.fetch_result_and_return_actor_to_pool = _ORIGINAL.pop("fetch")
