"""Service discovery: backends registered in etcd feed new Runtimes (see docs/discovery.md)."""

from .manager import Discovery, Rebuilder
from .merge import BadValue, merge, parse_backend

__all__ = ["BadValue", "Discovery", "Rebuilder", "merge", "parse_backend"]
