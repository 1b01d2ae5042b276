"""What every Ray user of the runner shares (the Serve deployment, batch workers): connecting to a local or
an existing Ray, checking that the cluster can ever hold what is asked, and bounded shutdown."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from runner.errors import CapabilityError, RunnerError
from runner.schema import RaySettings

log = logging.getLogger(__name__)


def import_ray(what: str) -> Any:
    """The ray module, or a one-line CapabilityError naming `what` needs it and the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise CapabilityError(
            f"{what} needs Ray ({err}): install the ray extra, pip install 'diffusion-runner[ray]'"
        ) from err
    return ray


def connect(ray: Any, settings: RaySettings) -> bool:
    """ray.init for `settings` (ray.address, or a local Ray when it is null and RAY_ADDRESS is unset);
    True when this process started a local Ray (and should shut it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline by default: no usage report attempts
    local = settings.address is None and not os.environ.get("RAY_ADDRESS")
    init: dict[str, Any] = {"namespace": settings.namespace}
    if local:
        init["include_dashboard"] = False
    try:
        ray.init(address=settings.address, **init)
    except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
        where = f"ray.address={settings.address}" if settings.address else "a local Ray"
        raise RunnerError(f"cannot start Ray ({where}): {one_line(err)}") from err
    return local


def check_fits(nodes: list[Mapping[str, Any]], needs: Mapping[str, tuple[str, float]], what: str, hint: str) -> None:
    """A one-line CapabilityError when no node of the cluster can ever hold one `what`: Ray would otherwise
    wait forever for the resources (asking for a GPU where there is none hangs). `nodes`: ray.nodes();
    `needs`: Ray resource ("CPU", "GPU") -> (the option that asks for it, the amount)."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    if any(all(have.get(key, 0.0) >= amount for key, (_, amount) in needs.items()) for have in alive):
        return
    largest = ", ".join(f"{max((have.get(key, 0.0) for have in alive), default=0.0):g} {key}" for key in needs)
    asked = ", ".join(f"{option}={amount:g}" for option, amount in needs.values())
    raise CapabilityError(
        f"no node of the Ray cluster can hold one {what} ({asked}; the largest node has {largest}): {hint}"
    )


def one_line(err: BaseException) -> str:
    """An exception's message on one line (Ray's errors carry whole remote tracebacks: first and last line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{lines[0]} ... {lines[-1]}" if len(lines) > 1 else (lines[0] if lines else type(err).__name__)


def bounded(what: str, action: Callable[[], Any], timeout_s: float) -> None:
    """Run `action` in a thread; give up on it (logged) after timeout_s."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - reported below; shutting down goes on
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"runner-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.warning("%s did not finish within %.0f s; exiting anyway", what, timeout_s)
    elif errors:
        log.warning("%s failed: %s", what, one_line(errors[0]))
