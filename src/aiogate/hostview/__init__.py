"""One view of the backends per host when `server.workers > 1` (ADR 0017).

`HostView` (host.py) runs in the supervisor: the host's backend state, active health checks
and breaker decisions. `HostLink` (link.py) runs in each worker: it follows that state and
reports the worker's attempt outcomes. `protocol.py` is what they say to each other.
"""
