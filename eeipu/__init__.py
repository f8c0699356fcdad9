"""EEIPU: memoization-aware, cost-cooled Bayesian optimization for staged pipelines.

This package is the ground floor: it knows nothing of the cache, the pipelines or the service.
What the cache holds reaches it as plain data (``CachedPrefix``).
"""

from eeipu.base import (
    BudgetState,
    CachedPrefix,
    Candidate,
    Observation,
    Optimizer,
    Pending,
    RandomSearch,
    prefix_id,
)
from eeipu.registry import make_optimizer, optimizer_names, register_optimizer
from eeipu.space import Categorical, Float, Int, Param, SearchSpace

__all__ = [
    "BudgetState",
    "CachedPrefix",
    "Candidate",
    "Categorical",
    "Float",
    "Int",
    "Observation",
    "Optimizer",
    "Param",
    "Pending",
    "RandomSearch",
    "SearchSpace",
    "make_optimizer",
    "optimizer_names",
    "prefix_id",
    "register_optimizer",
]
