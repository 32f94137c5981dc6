"""lime's ``lime.wrappers.scikit_image``: ``SegmentationAlgorithm('quickshift' | 'slic' |
'felzenszwalb', **params)``, a callable ``segmentation_fn`` for ``LimeImageExplainer`` that
keeps only the parameters the scikit-image function takes, and its ``BaseWrapper``."""
from __future__ import annotations

import types

from ..utils.generic_utils import has_arg

__all__ = ["BaseWrapper", "SegmentationAlgorithm"]


class BaseWrapper:
    """A target function (or callable object) with stored keyword parameters
    (``target_fn``, ``target_params``), as lime's."""

    def __init__(self, target_fn=None, **target_params):
        self.target_fn = target_fn
        self.target_params = target_params

    def _check_params(self, parameters):
        """Raise ``ValueError`` for a parameter the target function does not take, and
        ``TypeError`` for a string of parameters or no callable target."""
        if self.target_fn is None:
            if not callable(self):
                raise TypeError("invalid argument: tested object is not callable, please provide a valid target_fn")
            fn = self.__call__
        elif isinstance(self.target_fn, (types.FunctionType, types.MethodType)):
            fn = self.target_fn
        else:
            fn = self.target_fn.__call__
        if isinstance(parameters, str):
            raise TypeError("invalid argument: list or dictionnary expected")
        for name in parameters:
            if not has_arg(fn, name):
                raise ValueError(f"{name} is not a valid parameter")

    def set_params(self, **params):
        """Replace ``target_params`` (checked against the target function)."""
        self._check_params(params)
        self.target_params = params

    def filter_params(self, fn, override=None):
        """The stored parameters that ``fn`` takes, updated with ``override``."""
        kept = {k: v for k, v in self.target_params.items() if has_arg(fn, k)}
        kept.update(override or {})
        return kept


class SegmentationAlgorithm(BaseWrapper):
    """``SegmentationAlgorithm(algo_type, **target_params)``: scikit-image's ``quickshift``,
    ``slic`` or ``felzenszwalb`` with the given parameters (those the function does not take
    are dropped); calling it on an image returns the segment map."""

    def __init__(self, algo_type, **target_params):
        self.algo_type = algo_type
        from skimage import segmentation as sks

        fn = {"quickshift": sks.quickshift, "slic": sks.slic, "felzenszwalb": sks.felzenszwalb}.get(algo_type)
        # an unknown algo_type leaves the wrapper without a target (lime's behaviour: calling
        # it then fails)
        if fn is not None:
            BaseWrapper.__init__(self, fn, **target_params)
            self.set_params(**self.filter_params(fn))

    def __call__(self, *args):
        return self.target_fn(args[0], **self.target_params)
