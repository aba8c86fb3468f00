"""The one error of a model spec or checkpoint that cannot be used."""

from __future__ import annotations


class CheckpointError(Exception):
    """A model spec cannot be used; the message is one line meant for the user."""
