"""Every ``xaikernels.captum`` class against Captum's class of the same name: the same base
classes (by name, in order) and, for ``__init__`` and ``attribute``, Captum's positional
parameters in Captum's order with Captum's defaults, Captum's keyword-only parameters, and any
extra of ours keyword-only — so code written for Captum binds the same way."""
import inspect

import pytest

import xaikernels.captum as xc

captum_attr = pytest.importorskip("captum.attr")

_SHARED = [n for n in xc.__all__ if hasattr(captum_attr, n)]


def _split(fn):
    params = inspect.signature(fn).parameters.values()
    pos = [(p.name, repr(p.default)) for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY
           and p.kind is not inspect.Parameter.VAR_KEYWORD]
    kw = {p.name: repr(p.default) for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return pos, kw


@pytest.mark.peer
@pytest.mark.parametrize("name", _SHARED)
def test_class_matches_captum(name):
    theirs, ours = getattr(captum_attr, name), getattr(xc, name)
    skip = {"object", "ABC", "Generic"}
    assert [c.__name__ for c in ours.__mro__ if c.__name__ not in skip][1:] == \
        [c.__name__ for c in theirs.__mro__ if c.__name__ not in skip][1:]
    for method in ("__init__", "attribute"):
        if not hasattr(theirs, method):
            continue
        (tp, tk), (op, ok) = _split(getattr(theirs, method)), _split(getattr(ours, method))
        assert op == tp, f"{name}.{method}: positional parameters {op} != Captum's {tp}"
        assert {k: v for k, v in ok.items() if k in tk} == tk, f"{name}.{method}: keyword-only differ"


def test_shared_classes_found():
    assert len(_SHARED) >= 15  # the drop-in's attribution classes are all Captum's names
