"""EEIPU: memoization-aware, cost-cooled Bayesian optimization for staged pipelines.

This package is the ground floor: it knows nothing of the cache, the pipelines or the service.
What the cache holds reaches it as plain data.
"""

from eeipu.space import Categorical, Float, Int, Param, SearchSpace

__all__ = ["Categorical", "Float", "Int", "Param", "SearchSpace"]
