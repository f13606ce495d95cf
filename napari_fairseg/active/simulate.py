"""The fair active-learning experiment of seed 001, with the ground truth as the annotator.

Protocol (METHODS §5, seed 001 §4.1): per seed, draw an initial labelled set from the pool split
with fixed counts per group (5/5, 8/2 or 2/8 between Group 1 and Group 2), train a model on it
(shared by every strategy of that seed, so all start from the same point), then for each
strategy run ``cycles`` active-learning cycles of ``batch`` new labels. Each cycle is a real
:func:`~.loop.round_job` on a real :class:`~.project.Project` (``<out>/projects/<strategy>-seed<k>``);
the oracle saves the suggested cases' ground truth as new annotation versions. One CSV row per
strategy × seed × cycle (cycle 0 = the initial set) records the labelled count, held-out Dice,
per-group Dice, Δ, ESSP, and each group's share of the labelled set.

``results.csv`` is rewritten (atomically) after every cycle, and a rerun with the same output
folder and settings skips the strategy × seed runs already complete, so an interrupted
experiment resumes; other settings in a folder with results are refused (``config.json``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.arrays import load_case
from ..data.atomic import restore_formulas, write_csv_atomic, write_text_atomic
from ..data.manifest import Cohort
from ..errors import InputDataError
from ..models.checkpoint import load_checkpoint
from ..options import SIMULATION
from ..progress import Job, Progress
from ..report.figures import save_learning_curves
from ..training import default_group_attribute
from .loop import RoundConfig, case_groups, fit_job, round_job
from .project import Project
from .strategies import STRATEGIES


@dataclass(frozen=True)
class SimulationConfig:
    """An experiment.

    Attributes
    ----------
    strategies : tuple of str
    seeds : tuple of int
        Each seed draws its own initial set and seeds training and the random strategies.
    initial : tuple of int
        Initial labels per group, in the sorted order of the group attribute's values
        (``Group 1``, ``Group 2``): seed 001's 5/5, 8/2 and 2/8.
    cycles : int
        Active-learning cycles after the initial set.
    round : RoundConfig
        Training and scoring settings (its ``batch`` is the labels added per cycle; its
        ``strategy`` and ``seed`` are set per run).
    """

    strategies: tuple[str, ...] = SIMULATION["strategies"]
    seeds: tuple[int, ...] = SIMULATION["seeds"]
    initial: tuple[int, ...] = SIMULATION["initial"]
    cycles: int = SIMULATION["cycles"]
    round: RoundConfig = field(default_factory=RoundConfig)

    def __post_init__(self):
        object.__setattr__(self, "strategies", tuple(self.strategies))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "initial", tuple(int(n) for n in self.initial))
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(f"unknown strategies {bad}; choose from {STRATEGIES}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.cycles < 1 or min(self.initial, default=0) < 0 or sum(self.initial) < 1:
            raise ValueError("cycles must be >= 1 and the initial set must hold at least one case")


def initial_set(cohort: Cohort, config: SimulationConfig, seed: int) -> list[str]:
    """The seed's initial labelled cases: ``config.initial[i]`` drawn from the i-th group."""
    rc = config.round
    attribute = rc.group_attribute or default_group_attribute(cohort)
    pool = cohort.cases.loc[cohort.cases["split"].astype(str) == rc.pool_split, "case_id"].tolist()
    groups = case_groups(cohort, attribute, pool)
    names = sorted(set(groups) - {"unknown"})
    if len(names) != len(config.initial):
        raise InputDataError(cohort.source, f"initial counts {config.initial} need {len(config.initial)} groups, "
                             f"but {attribute!r} has {len(names)} in split {rc.pool_split!r}: {names}")
    rng = np.random.default_rng([seed, 1])
    chosen = []
    for g, n in zip(names, config.initial, strict=True):
        members = sorted(groups.index[groups == g])
        if n > len(members):
            raise InputDataError(cohort.source, f"group {g!r} has {len(members)} pool cases, fewer than the "
                                 f"{n} initial labels asked for")
        chosen += list(rng.choice(members, n, replace=False))
    need = sum(config.initial) + config.cycles * rc.batch
    if need > len(pool):
        raise InputDataError(cohort.source, f"the protocol needs {need} labels but split {rc.pool_split!r} has "
                             f"{len(pool)} cases; use a bigger cohort or fewer cycles")
    return sorted(chosen)


def _row(strategy: str, seed: int, cycle: int, metrics: dict) -> dict:
    keep = ("n_labelled", "dice", "delta", "essp", "worst_group", "n_eval", "train_seconds", "seconds")
    row = {"strategy": strategy, "seed": seed, "cycle": cycle}
    row.update({k: metrics.get(k) for k in keep})
    row.update({k: v for k, v in metrics.items()
                if k.startswith(("dice[", "ratio[", "n_labelled[", "weight["))})
    return row


def simulate_job(cohort: Cohort, config: SimulationConfig, out_dir: str | Path) -> Job[pd.DataFrame]:
    """Run the experiment into ``out_dir``; returns the results table (also ``results.csv``).

    Writes ``results.csv``, ``summary.csv`` (final-budget mean and std per strategy),
    ``learning_curves.png`` and ``config.json``, one project per run under ``projects/`` and
    the shared initial models under ``initial/``.
    """
    if cohort.source is None:
        raise InputDataError(None, "the cohort has no manifest path; write its manifest first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.csv"
    done = restore_formulas(pd.read_csv(results_path)) if results_path.is_file() else pd.DataFrame()
    complete = set()
    if not done.empty:
        counts = done.groupby(["strategy", "seed"])["cycle"].nunique()
        complete = {k for k, n in counts.items() if n == config.cycles + 1}
        done = done[[(s, k) in complete for s, k in zip(done["strategy"], done["seed"], strict=True)]]
    rows = done.to_dict("records")
    settings = json.loads(json.dumps(asdict(config), default=str))
    if (out / "config.json").is_file() and rows:
        before = json.loads((out / "config.json").read_text())
        diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if diff:
            raise InputDataError(out, f"holds results of an experiment with other settings ({', '.join(diff)} "
                                 "differ); choose another output folder or remove it")
    firsts = {seed: initial_set(cohort, config, seed) for seed in config.seeds}  # fail before any work
    write_text_atomic(out / "config.json", json.dumps(settings, indent=2) + "\n")
    runs = [(k, s) for k in config.seeds for s in config.strategies]
    t0 = time.perf_counter()
    for i, (seed, strategy) in enumerate(runs):
        yield Progress("simulate", i, len(runs), f"{strategy} seed {seed}")
        if (strategy, seed) in complete:
            continue
        rc = replace(config.round, strategy=strategy, seed=seed)
        init_ckpt = out / "initial" / f"seed{seed}.pt"
        first = firsts[seed]
        if not init_ckpt.is_file():  # shared by every strategy of this seed
            attribute = rc.group_attribute or default_group_attribute(cohort)
            yield from fit_job(cohort, first, rc, out=init_ckpt, attribute=attribute)
        root = out / "projects" / f"{strategy}-seed{seed}"
        if root.exists():  # an interrupted run: start it again
            shutil.rmtree(root)
        with Project.create(root, cohort) as project:
            _oracle(project, cohort, first)
            for cycle in range(config.cycles + 1):
                last = cycle == config.cycles
                result = yield from round_job(project, rc, train=cycle > 0, suggest=not last,
                                              model=load_checkpoint(init_ckpt) if cycle == 0 else None)
                rows.append(_row(strategy, seed, cycle, result.metrics))
                write_csv_atomic(results_path, pd.DataFrame(rows))
                if not last:
                    _oracle(project, cohort, result.suggestions["case_id"].tolist())
    yield Progress("simulate", len(runs), len(runs), f"{time.perf_counter() - t0:.0f} s")
    table = pd.DataFrame(rows)
    write_csv_atomic(out / "summary.csv", summarise(table), index=True)
    ratio = sorted(c for c in table.columns if c.startswith("ratio["))
    save_learning_curves(table, out / "learning_curves.png", ratio=ratio[0] if ratio else None,
                         title=f"{cohort.name}: initial {'/'.join(map(str, config.initial))}, "
                               f"+{config.round.batch} per cycle, seeds {', '.join(map(str, config.seeds))}")
    return table


def _oracle(project: Project, cohort: Cohort, ids: Sequence[str]) -> None:
    """The ground truth plays the annotator: each case's label becomes a new version."""
    for cid in ids:
        project.save_annotation(cid, load_case(cohort, cid).label, author="oracle", source="imported")


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds at the final cycle, per strategy (rows), for every metric."""
    final = table[table["cycle"] == table["cycle"].max()]
    cols = [c for c in final.columns if c not in ("strategy", "seed", "cycle", "worst_group")
            and pd.api.types.is_numeric_dtype(final[c])]
    agg = final.groupby("strategy", sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{c}_{s}" for c, s in agg.columns]
    return agg


def delta_reduction(table: pd.DataFrame, strategy: str = "wle", baseline: str = "entropy") -> float:
    """1 − Δ(strategy) / Δ(baseline) at the final cycle, on seed means (seed 001's headline)."""
    final = table[table["cycle"] == table["cycle"].max()].groupby("strategy")["delta"].mean()
    if strategy not in final or baseline not in final or not final[baseline] > 0:
        return float("nan")
    return float(1 - final[strategy] / final[baseline])
