"""lime's ``lime.lime_image``: ``LimeImageExplainer`` and ``ImageExplanation`` (see
:mod:`xaikernels.lime`), so that ``from lime import lime_image`` becomes
``from xaikernels.lime import lime_image``."""
from . import ImageExplanation, LimeImageExplainer

__all__ = ["LimeImageExplainer", "ImageExplanation"]
