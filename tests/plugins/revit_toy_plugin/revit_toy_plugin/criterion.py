"""Criterion ``toy``: the L1 norm of the weights each index owns (no gradient needed).

It uses only the criterion's public API: :meth:`Criterion.index_sums`, :meth:`Criterion.per_group` and
:attr:`Criterion.options`; its name is its entry point's (``toy``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from revit.options import Option
from revit.prune.criteria import Criterion, Scores


class ToyCriterion(Criterion):
    """Sum of |w|**power over the entries an index owns: lower sums are pruned first."""

    description = "toy plugin: sum of |w|**power over the weights an index owns (no gradient)"
    needs_grad = False
    option_specs = (Option("power", 1.0, "exponent of |w| summed over the owned weights"),)

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        power = float(self.options["power"])
        return self.per_group(self.index_sums({k: v.detach().double().abs() ** power for k, v in params.items()}))
