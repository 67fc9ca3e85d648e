"""Inference backends behind one interface; the registry key is the bundle's `runtime`."""

from __future__ import annotations

from edge.backends.base import BACKENDS, Backend, Prediction, backend_class, create_backend

__all__ = ["BACKENDS", "Backend", "Prediction", "backend_class", "create_backend"]
