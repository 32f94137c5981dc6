"""lime's ``lime.explanation``: ``Explanation`` and the ``DomainMapper`` base class (see
:mod:`xaikernels.lime`)."""
from . import DomainMapper, Explanation

__all__ = ["Explanation", "DomainMapper"]
