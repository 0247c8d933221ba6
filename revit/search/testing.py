"""Test support: every storage mode by name, and a throw-away PostgreSQL server.

Like Optuna's ``optuna/testing/storages.py``: tests parametrize over :data:`STORAGE_MODES` and get
a URL from :func:`storage_url`.  :func:`postgres_server` starts a real server with Debian's
``initdb``/``pg_ctl`` in a temporary folder on a free port and stops it afterwards; as root (which
``initdb`` refuses) it runs the server as the unprivileged user ``nobody`` through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

STORAGE_MODES = ("sqlite", "journal", "postgresql")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries or the psycopg2 driver are missing (the message says which)."""


def pg_bindir() -> Path | None:
    """Folder of ``initdb``/``pg_ctl``: ``$PG_BINDIR``, Debian's newest ``/usr/lib/postgresql/*/bin``, or PATH."""
    env = os.environ.get("PG_BINDIR")
    cands = [env] if env else []
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for c in cands:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    which = shutil.which("initdb")
    return Path(which).parent if which and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server(user: str = "nobody") -> Iterator[str]:
    """Start a PostgreSQL server for the duration of the block; yield its URL (trust auth, user ``revit``)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg2 missing: pip install 'revit[postgres]'") from None
    bindir = pg_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL server binaries missing: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="revit-pg-"))
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    if as_root:
        import pwd

        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    data, log, port = root / "data", root / "server.log", free_port()

    def run(*cmd: str) -> None:
        r = subprocess.run(prefix + list(cmd), capture_output=True, text=True, cwd=root, timeout=120)
        if r.returncode != 0:
            raise PostgresUnavailable(f"{Path(cmd[0]).name} failed: {(r.stderr or r.stdout).strip()[-500:]}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "revit", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        started = True
        yield f"postgresql://revit@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, cwd=root, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def tiny_study_doc(**over: Any) -> dict[str, Any]:
    """A study spec document on scikit-learn digits (8x8), 2 blocks, 1 epoch: about a second per trial."""
    from revit.cost import MacsCost

    doc: dict[str, Any] = {
        "schema": "revit/study/v1", "kind": "study", "name": "tiny",
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "pruner": {"name": "median", "n_startup_trials": 1},
        "n_trials": 3,
        "setting": {"depth": 2, "img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10},
        "budget": {MacsCost.spec_key: "200K"},
        "space": {"family": "less-more-less", "base": "less-more-less",
                  "params": {"plateau": [0.2, 1.0], "mlp_end": [0.25, 1.0]}},
        "data": {"source": "digits", "val_size": 300},
        "train": {"epochs": 1, "batch_size": 64},
        "seeds": [0, 1], "repeats": {"top_k": 1},
        "baselines": [{"rule": "uniform"}, {"rule": "paper"}],
        "heartbeat_s": 1, "grace_s": 30,
    }
    doc.update(over)
    return doc


def storage_url(mode: str, tmp: str | os.PathLike[str], pg_url: str | None = None, name: str = "study") -> str:
    """A fresh storage URL of ``mode`` under ``tmp`` (PostgreSQL: the running server's URL)."""
    if mode == "sqlite":
        return f"sqlite:///{Path(tmp) / name}.db"
    if mode == "journal":
        return f"journal:{Path(tmp) / name}.log"
    if mode == "postgresql":
        if pg_url is None:
            raise PostgresUnavailable("no PostgreSQL server")
        return pg_url
    raise ValueError(f"unknown storage mode {mode!r}; known: {', '.join(STORAGE_MODES)}")


__all__ = ["STORAGE_MODES", "PostgresUnavailable", "free_port", "pg_bindir", "postgres_server", "storage_url",
           "tiny_study_doc"]


def _quick_objective_class() -> Any:
    from revit.search.objective import StudyObjective, report_epoch

    class QuickObjective(StudyObjective):
        """The study objective with training replaced by a closed-form score of the config (no torch, no data).

        Everything else is the real path: the trial's family suggests its parameters, the config is
        generated for the budget, its MACs and latency are user attributes, and curves go to the Optuna pruner.
        The score rises with the config's parameters and falls with its distance from the budget's
        EMB 48 (a smooth landscape), plus a per-seed offset; epochs give a rising curve.
        """

        def train(self, cfg: Any, seed: int, trial: BaseTrial | None = None,
                  step0: int = 0) -> tuple[float, float, list[float], float]:
            import optuna

            from revit import counting

            params = counting.params(cfg)
            score = 0.5 + 0.4 * (1 - abs(cfg.embed_dim - 48) / 96) + 0.05 * min(params / 1e6, 1) + 0.002 * seed
            curve = []
            epochs = self.spec.train.epochs
            for e in range(epochs):
                curve.append(score * (e + 1) / epochs)
                if trial is not None and report_epoch(trial, curve[-1], step0 + e + 1):
                    raise optuna.TrialPruned(f"pruned at epoch {e}")
            return curve[-1], curve[-1] - 0.01, curve, 0.0

    return QuickObjective


def quick_objective(spec: Any, **kw: Any) -> Any:
    """A :class:`~revit.search.objective.StudyObjective` that scores configs in closed form instead of training
    (samplers, Optuna pruners, storages and the runner tested at full speed); ``kw`` go to the objective."""
    return _quick_objective_class()(spec, **kw)
