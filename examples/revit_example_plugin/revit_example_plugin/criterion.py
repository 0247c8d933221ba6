"""Criterion ``fisher``: an index's empirical Fisher saliency, the sum over the entries it owns of (w dL/dw)^2.

Written against the criterion's public API only: :attr:`~revit.prune.criteria.Criterion.options` (declared in
``option_specs``), :meth:`~revit.prune.criteria.Criterion.index_sums` and
:meth:`~revit.prune.criteria.Criterion.per_group`.  Its name is its entry point's (``fisher``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from revit.options import Option
from revit.prune.criteria import Criterion, Scores


class Fisher(Criterion):
    """sum over owned entries of (w * dL/dw)^2, to the power ``power``: lower is pruned first."""

    description = "empirical Fisher: sum of (w * dL/dw)^2 over the entries an index owns"
    option_specs = (Option("power", 1.0, "the summed squares are raised to this power (0.5: an L2 norm)"),)

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        # grads holds the parameters that have a gradient; index_sums needs every owned one, so a missing
        # gradient counts as zero
        zero = torch.zeros((), dtype=torch.float64)
        sq = {k: (p.detach().double() * grads[k].double()) ** 2 if k in grads else zero.expand(p.shape)
              for k, p in params.items()}
        return self.per_group(self.index_sums(sq) ** float(self.options["power"]))
