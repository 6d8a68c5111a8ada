"""Check a `--address` before any work: Ray itself retries an unreachable one forever.

`ray.init(address="10.0.0.5:1")` logs "Failed to connect to GCS" every 30 s and never returns, so a
typo in a cluster job's address would hang the job after its run folder was made. A TCP connect with a
timeout answers the same question in seconds, without importing Ray.
"""

from __future__ import annotations

import os
import socket

from pruning.errors import UserError

FORMS = "HOST:PORT (a head's GCS, e.g. 10.0.0.5:6379) or auto"
CONNECT_TIMEOUT_S = 10.0


def host_and_port(address: str, field: str = "--address") -> tuple[str, int]:
    """Split 'host:port' (IPv6 hosts in brackets: '[::1]:6379').

    Ray Client addresses (ray://) are refused: under Ray Client, Tune runs its driver loop as a task on the head node
    (Ray's docs advise against Client for Tune), so the search's recorder would write its study and run folder there,
    not here; and Client needs the ray[client] extra, which PrunePilot does not install.
    """
    rest = address.strip()
    if rest.lower().startswith("ray://"):
        raise UserError(f"{field}: {address!r} is a Ray Client address, which a search cannot use (Tune would run "
                        "the search's driver on the head node, away from its run folder and study); give the head's "
                        "GCS address HOST:PORT (6379 unless `ray start --head --port` said otherwise) and run the "
                        "search on a machine that reaches every node")
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{field}: expected {FORMS}; got {address!r}")
    return host, int(port)


def address_of_environment(address: str | None) -> tuple[str | None, str]:
    """The cluster a Ray search joins and the name its messages give it: `--address`, else `RAY_ADDRESS` (Ray's own
    convention, set inside a Ray Job), else None: Ray embedded in this process."""
    if address:
        return address, "--address"
    from_env = os.environ.get("RAY_ADDRESS", "").strip()
    return (from_env, "RAY_ADDRESS") if from_env else (None, "--address")


def check_ray_address(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S, field: str = "--address") -> None:
    """Raise a UserError unless something accepts TCP connections at `address` (None: embedded Ray, nothing to check).

    'auto' and 'local' are left to Ray: it finds (or fails to find) a cluster started on this machine at once.
    """
    if address is None or address.strip() in ("auto", "local"):
        return
    host, port = host_and_port(address, field)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UserError(f"{field}: nothing answers at {host}:{port} ({reason} within {timeout_s:.0f} s); "
                        f"is the head node up (`ray start --head --port={port}`) and the address right?") from None
