"""lime's ``lime.lime_text``: ``LimeTextExplainer``, ``IndexedString``,
``IndexedCharacters`` and ``TextDomainMapper`` (see :mod:`xaikernels.lime`)."""
from . import IndexedCharacters, IndexedString, LimeTextExplainer, TextDomainMapper

__all__ = ["LimeTextExplainer", "IndexedString", "IndexedCharacters", "TextDomainMapper"]
