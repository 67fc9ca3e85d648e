"""One exception hierarchy for the quantize package."""

from __future__ import annotations


class QuantizeError(Exception):
    """Base of every error quantization raises on purpose."""


class ExtraMissing(QuantizeError):
    """The runtime's converter is not installed; names the extra."""


class GateFailed(QuantizeError):
    """INT8 accuracy dropped more than allowed; the report says by how much."""
