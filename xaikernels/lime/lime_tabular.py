"""lime's ``lime.lime_tabular``: ``LimeTabularExplainer`` and ``TableDomainMapper`` (see
:mod:`xaikernels.lime`), and the discretizers lime's module imports."""
from . import LimeTabularExplainer, TableDomainMapper
from .discretize import (BaseDiscretizer, DecileDiscretizer, EntropyDiscretizer, QuartileDiscretizer,
                         StatsDiscretizer)

__all__ = ["LimeTabularExplainer", "TableDomainMapper", "BaseDiscretizer", "StatsDiscretizer",
           "QuartileDiscretizer", "DecileDiscretizer", "EntropyDiscretizer"]
