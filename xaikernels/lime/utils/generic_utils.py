"""lime's ``lime.utils.generic_utils``."""
from __future__ import annotations

import inspect

__all__ = ["has_arg"]


def has_arg(fn, arg_name) -> bool:
    """Whether the callable ``fn`` takes ``arg_name`` as a keyword argument (a positional-or-
    keyword or keyword-only parameter; ``**kwargs`` does not count, as in lime)."""
    try:
        sig = inspect.signature(fn)
    except ValueError:  # builtins / Cython functions without a signature: their __call__'s
        sig = inspect.signature(fn.__call__)
    p = sig.parameters.get(arg_name)
    return p is not None and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
