"""Criterion ``toy``: the L1 norm of the weights each index owns (no gradient needed)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from revit.prune.criteria import Criterion, Scores


class ToyCriterion(Criterion):
    """Sum of |w| over the entries an index owns: lower sums are pruned first."""

    needs_grad = False

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        return self._scores(self._flat_sums({k: v.detach().double().abs() for k, v in params.items()}))
