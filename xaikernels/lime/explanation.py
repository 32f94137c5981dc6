"""lime's ``lime.explanation``: ``Explanation`` and the ``DomainMapper`` base class (see
:mod:`xaikernels.lime`), and ``LimeError`` (which lime's module imports)."""
from . import DomainMapper, Explanation
from .exceptions import LimeError

__all__ = ["Explanation", "DomainMapper", "LimeError"]
