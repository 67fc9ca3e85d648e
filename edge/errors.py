"""One exception hierarchy for the edge package."""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(EdgeError):
    """The YAML config is invalid: names the key path and the fix."""


class BundleError(EdgeError):
    """A bundle is incomplete, tampered, from a newer schema or fails its self-test."""


class BackendUnavailable(EdgeError):
    """The runtime a bundle asks for is not installed or its hardware is absent."""


class SourceError(EdgeError):
    """A frame source cannot be opened or delivered a frame that cannot be used."""


class FrameError(EdgeError):
    """One frame could not be decoded or scored; yields an `error` verdict."""


class SpoolError(EdgeError):
    """The on-disk verdict spool cannot be written or read (disk full, damaged file)."""


class TrustError(BundleError):
    """A bundle is not signed by a trusted key, or is older than one already accepted (rollback)."""
