"""Verdict publishers."""
