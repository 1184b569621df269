"""Search the plan space: the fastest plan, the cheapest plan and the Pareto front between.

The programmatic API::

    from vtrain_opt import get_model
    from vtrain_opt.search import Limits, SearchSpace, search

    space = SearchSpace.create(get_model("gpt3-175b"), ["a100-80gb"], max_gpus=1024)
    result = search(space, tokens=300e9, limits=Limits(budget_usd=5e6), objective="time")
    result.best_time  # a row: plan columns + days, dollars, MFU, memory, breakdown

``workers=0`` (the default) evaluates in this process without importing Ray, so the call
works inside a Ray task; ``workers=N`` or ``ray_address=...`` shards the work over Ray.
"""

from vtrain_opt.search.engine import OBJECTIVES, STRATEGIES, SearchResult, search
from vtrain_opt.search.limits import SEARCH_REASONS, Limits
from vtrain_opt.search.space import GpuChoice, SearchSpace, gpu_choice

__all__ = [
    "OBJECTIVES",
    "SEARCH_REASONS",
    "STRATEGIES",
    "GpuChoice",
    "Limits",
    "SearchResult",
    "SearchSpace",
    "gpu_choice",
    "search",
]
