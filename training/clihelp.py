"""`--help` that shows every default: one formatter for edge-train, edge-quantize and edge-deploy."""

from __future__ import annotations

import argparse

__all__ = ["DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends `(default: X)` to each option's help, except where there is no default to show.

    None, False (a store_true flag) and [] say nothing a reader can use, and an option whose default comes from
    elsewhere (a config file) names it in its own help text.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)
