"""The user attributes a study's trials carry: one named key each, and the reads that interpret them.

Every module of :mod:`revit.search` reads and writes trial attributes through these names, so a key is
spelled once.  What a trial *is* (``role``, ``family``, ``arm``, ``seed``, ``budget``, ``repeat_of``,
``retry_of``) is set when it is enqueued or started; what it *gave* (accuracies, MACs, widths) when it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from revit.cost import LatencyCost, MacsCost

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

# what a trial is
ROLE = "role"  # "candidate" (sampled by its family's sampler) or "baseline"
FAMILY = "family"  # the searched family's tag (candidates); baselines: "baseline:ARM"
ARM = "arm"  # the baseline arm, or "FAMILY-search" for candidates
SEED = "seed"  # the training seed
BUDGET = "budget"  # the MACs or latency budget it was generated for
GROUP = "group"  # the config over seeds it belongs to (a candidate and its repeats; a baseline arm at a budget)
REPEAT_OF = "repeat_of"  # studies of revit <= 0.1.0 only: the trial whose config it repeats with another seed
RETRY_OF = "retry_of"  # the trial number (same study) it retries after a dead worker or an interrupt

# how it ran
WORKER = "worker"  # host:pid of the process running it
HEARTBEAT = "heartbeat"  # unix time, refreshed while it runs
INTERRUPTED = "interrupted"  # set when Ctrl-C stopped it (the next run retries it)
ERROR = "error"  # "Type: message" of the exception that failed it
INFEASIBLE = "infeasible"  # why it was pruned before training (budget unreachable, outside the table)

# what it gave (a candidate: VAL_ACC and TEST_ACC are the means over its seeds, RUNS has each seed's)
RUNS = "runs"  # a candidate's finished seeds, in order: [{seed, val_acc, test_acc, val_curve, train_seconds}]
VAL_ACC, TEST_ACC, VAL_CURVE, TRAIN_SECONDS = "val_acc", "test_acc", "val_curve", "train_seconds"
PARAMS, EMBED_DIM, MLP_FACTOR, BLOCKS = "params", "embed_dim", "mlp_factor", "blocks"
DEPTH = "depth"  # the config's number of blocks; also the searched parameter's name when a family searches depth
MACS, LATENCY_MS = MacsCost.spec_key, LatencyCost.spec_key  # a cost's value in the unit users write: its spec key
# how a config's latency was established: "predicted" (by the table), "measured" (met the budget as timed:
# measure_latency) or "measured, not met" (the closest config after the rounds); the measured ms/batch
LATENCY_ESTABLISHED, MEASURED_LATENCY_MS = "latency_established", "measured_latency_ms"

CANDIDATE, BASELINE = "candidate", "baseline"  # the values of ROLE

# on the baselines' study (not a trial)
SKIPPED_BASELINES = "skipped_baselines"  # "ARM@BUDGET: why" of each baseline that cannot be generated
# what a retry copies from the trial it retries (with the seeds it finished: none is trained twice)
IDENTITY = (ROLE, FAMILY, ARM, SEED, BUDGET, REPEAT_OF, RUNS)


def role(trial: BaseTrial) -> str:
    """``candidate`` or ``baseline`` (a trial that has not started yet counts as a candidate)."""
    return str(trial.user_attrs.get(ROLE, CANDIDATE))


def trial_family(trial: BaseTrial) -> str:
    """The family tag of a trial: its ``family`` attribute, or ``baseline:ARM`` for a baseline."""
    u = trial.user_attrs
    if FAMILY in u:
        return str(u[FAMILY])
    if u.get(ROLE) == BASELINE:
        return f"baseline:{u.get(ARM)}"
    return "?"


def trial_ref(trial: BaseTrial) -> str:
    """``PART#NUMBER``: a trial's name across the study's parts (trial numbers count per part)."""
    part = "baselines" if trial.user_attrs.get(ROLE) == BASELINE else trial.user_attrs.get(FAMILY, "?")
    return f"{part}#{trial.number}"


def retry_of(trial: BaseTrial) -> int | None:
    """The number of the trial ``trial`` retries, or None: not a retry, or a value that is no trial number (the
    storage may hold anything another program wrote, even an unhashable list)."""
    v = trial.user_attrs.get(RETRY_OF)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def is_original_candidate(trial: BaseTrial) -> bool:
    """A sampled candidate (not a retry; nor, in a study of revit <= 0.1.0, a repeat with another seed)."""
    u = trial.user_attrs
    return u.get(ROLE, CANDIDATE) == CANDIDATE and REPEAT_OF not in u and RETRY_OF not in u


__all__ = ["ARM", "BASELINE", "BLOCKS", "BUDGET", "CANDIDATE", "DEPTH", "EMBED_DIM", "ERROR", "FAMILY", "GROUP",
           "HEARTBEAT", "IDENTITY", "INFEASIBLE", "INTERRUPTED", "LATENCY_ESTABLISHED", "LATENCY_MS", "MACS",
           "MEASURED_LATENCY_MS", "MLP_FACTOR", "PARAMS",
           "REPEAT_OF", "RETRY_OF", "ROLE", "RUNS", "SEED", "SKIPPED_BASELINES", "TEST_ACC", "TRAIN_SECONDS", "VAL_ACC",
           "VAL_CURVE", "WORKER", "is_original_candidate", "retry_of", "role", "trial_family", "trial_ref"]
