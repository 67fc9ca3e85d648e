"""One exception hierarchy for the training package."""

from __future__ import annotations


class TrainingError(Exception):
    """Base of every error training raises on purpose."""


class DatasetError(TrainingError):
    """A dataset folder is empty or malformed: names the folder and what was expected."""


class TrainConfigError(TrainingError):
    """The training config has an unknown key or a bad value."""


class ExportError(TrainingError):
    """The exported graph breaks the I/O contract or disagrees with PyTorch."""
