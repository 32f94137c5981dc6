"""lime's ``lime.explanation``: ``Explanation`` and the ``DomainMapper`` base class (see
:mod:`xaikernels.lime`), ``LimeError`` (which lime's module imports) and the ``id_generator``
helper."""
import string

from . import DomainMapper, Explanation
from .exceptions import LimeError

__all__ = ["Explanation", "DomainMapper", "LimeError", "id_generator"]

_ID_CHARS = list(string.ascii_uppercase + string.digits)


def id_generator(size=15, random_state=None):
    """lime's helper for HTML element ids: ``size`` characters of A–Z and 0–9, drawn by one
    ``random_state.choice`` call (so the same ``RandomState`` gives lime's id; lime too
    needs a ``RandomState``, ``None`` fails there as here)."""
    return "".join(random_state.choice(_ID_CHARS, size, replace=True))
