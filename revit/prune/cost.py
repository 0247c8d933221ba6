"""Moved to :mod:`revit.cost` (one cost model for prune/ and rules/); this re-export goes with the new pruner."""

from revit.cost import CostModel, LatencyCost, LatencyTableLike, MacsCost, min_config, shrink  # noqa: F401
