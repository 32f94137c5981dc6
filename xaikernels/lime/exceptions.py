"""lime's ``lime.exceptions``: ``LimeError``, raised by :class:`xaikernels.lime.Explanation` for
an unknown ``mode`` (as lime)."""

__all__ = ["LimeError"]


class LimeError(Exception):
    """An error of the lime API (lime's ``LimeError``)."""
