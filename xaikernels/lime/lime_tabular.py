"""lime's ``lime.lime_tabular``: ``LimeTabularExplainer``, ``RecurrentTabularExplainer`` and
``TableDomainMapper`` (see :mod:`xaikernels.lime`), and the discretizers lime's module
imports."""
from . import LimeTabularExplainer, RecurrentTabularExplainer, TableDomainMapper
from .discretize import (BaseDiscretizer, DecileDiscretizer, EntropyDiscretizer, QuartileDiscretizer,
                         StatsDiscretizer)

__all__ = ["LimeTabularExplainer", "RecurrentTabularExplainer", "TableDomainMapper", "BaseDiscretizer", "StatsDiscretizer",
           "QuartileDiscretizer", "DecileDiscretizer", "EntropyDiscretizer"]
