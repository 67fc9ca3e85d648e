"""Verdict publishers: spool consumers behind one seam (base.Publisher), looked up by the config's `type`."""

from edge.publishers.base import REGISTRY, Publisher
from edge.publishers import json, sparkplug  # noqa: F401 - registers "json" and "sparkplug"

__all__ = ["REGISTRY", "Publisher"]
