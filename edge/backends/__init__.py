"""Inference backends behind one interface; the registry key is the bundle's `runtime`."""

from __future__ import annotations

from edge.backends.base import BACKENDS, Backend, Prediction, create_backend

__all__ = ["BACKENDS", "Backend", "Prediction", "create_backend"]
