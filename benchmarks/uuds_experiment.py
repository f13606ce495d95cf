"""Seed 002's experiment on the brain sample: T1 (labelled source) → T2-like (unlabelled target).

For each seed: a source-only model (the lower bound) and a model trained with the target's
labels (the upper bound); from the source model, pseudo-labels only (``--pseudo-label-split``,
seed 002 Eq. 5–8 on the target images themselves), UUDS, and UUDS without the domain prompt /
without the segmentation prompt / without uncertainty masking (the paper's Table 3), and UUDS
with the paper's Eq. 2 in place of our distribution matching (``--translation prompt``), and
UUDS's start alone (the target pre-map, as is or inverted, before any training). Every
model is evaluated on the target cohort's *test* cases (their labels are read for this only):
Dice, per-group Dice and ES-Dice. Prints a markdown table (mean ± std over seeds), the share of
the gap recovered, and seconds per epoch; writes every run's row to ``<out>/results-<source>.csv``.

    python benchmarks/uuds_experiment.py --out /tmp/uuds --seeds 0,1,2

The cohorts are generated at 1.5 mm (64×64×48 around the caudate) and the models train on the
``--spacing`` grid (3 mm by default: 32×32×24, what two CPU cores allow for 21 runs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_fairseg.data.readers import open_cohort
from napari_fairseg.data.synthetic import brain_cohort_job
from napari_fairseg.inference.predict import Predictor
from napari_fairseg.metrics.groups import equity_summary
from napari_fairseg.models.checkpoint import load_checkpoint
from napari_fairseg.models.uuds import UUDSOptions
from napari_fairseg.progress import run_job
from napari_fairseg.training.adapt import adapt_job, run_cohort
from napari_fairseg.training.trainer import TrainConfig, train_job, validate

METHODS = ("source only", "pseudo-labels only", "UUDS start only (no training)", "UUDS", "UUDS w/o domain prompt", "UUDS w/o segmentation prompt",
           "UUDS w/o uncertainty", "UUDS with the paper's Eq. 2", "supervised on target")


def cohorts(out: Path, n: int, source: str):
    for modality in ("t1", "t2"):
        if not (out / modality / "manifest.csv").exists():
            run_job(brain_cohort_job(out / modality, n_cases=n, seed=0, modality=modality))
    t1, t2 = open_cohort(out / "t1"), open_cohort(out / "t2")
    return (t1, t2) if source == "t1" else (t2, t1)


def evaluate(ckpt_path: Path, target) -> dict:
    ids = target.cases.loc[target.cases["split"] == "test", "case_id"].tolist()
    table = validate(Predictor.from_checkpoint(load_checkpoint(ckpt_path)), target, ids)
    s = equity_summary(table["dice"], table["group"])
    row = {"dice": s["overall"], "es_dice": s["es"], "delta": s["delta"]}
    for g, v in table.groupby("group")["dice"]:
        row[f"dice[{g}]"] = float(v.mean())
    return row


def _jobs(args, source, target, d: Path, base: dict, spacing) -> dict:
    """Method name → a function that starts its job (run in METHODS order: the source model first)."""
    def train(cohort, name):
        return lambda: train_job(cohort, config=TrainConfig(epochs=args.epochs, spacing=spacing, **base),
                                 out=d / f"{name}.pt")

    def pseudo():
        return train_job(run_cohort(source, target), init=d / "source.pt", out=d / "pseudo.pt",
                         config=TrainConfig(epochs=args.adapt_epochs, pseudo_label_split="pool", **base))

    def uuds(name, options, mask, translation="match"):
        config = TrainConfig(epochs=args.adapt_epochs, uncertainty_mask=mask, uuds_translation=translation, **base)
        return lambda: adapt_job(source, target, config, options=UUDSOptions(**options), init=d / "source.pt",
                                 out=d / f"{name.replace(' ', '_').replace('/', '').replace('.', '')}.pt")

    def start_only():  # the target pre-map and the source model, untouched: one epoch at a vanishing step
        return adapt_job(source, target, TrainConfig(epochs=1, **{**base, "lr": 1e-12}), init=d / "source.pt",
                         out=d / "start.pt")

    return {"source only": train(source, "source"), "supervised on target": train(target, "target"),
            "UUDS start only (no training)": start_only,
            "pseudo-labels only": pseudo, "UUDS": uuds("UUDS", {}, True),
            "UUDS w/o domain prompt": uuds("UUDS w/o domain prompt", {"domain_prompt": False}, True),
            "UUDS w/o segmentation prompt": uuds("UUDS w/o segmentation prompt", {"segmentation_prompt": False}, True),
            "UUDS w/o uncertainty": uuds("UUDS w/o uncertainty", {}, False),
            "UUDS with the paper's Eq. 2": uuds("UUDS with the paper's Eq. 2", {}, True, "prompt")}


def run(args) -> pd.DataFrame:
    out = Path(args.out)
    source, target = cohorts(out, args.cases, args.source)
    spacing = (args.spacing,) * 3
    rows = []
    for seed in args.seeds:
        d = out / f"{args.source}-seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        base = dict(seed=seed, batch_size=args.batch_size, lr=args.lr, cache=str(out / "cache"))
        jobs = _jobs(args, source, target, d, base, spacing)
        for name in ("source only", "supervised on target", *[m for m in METHODS if m not in
                                                               ("source only", "supervised on target")]):
            t = time.perf_counter()
            result = run_job(jobs[name]())
            seconds = time.perf_counter() - t
            row = {"method": name, "seed": seed, "epochs": len(result.log),
                   "s_per_epoch": float(result.log["seconds"].mean()), "wall_s": seconds,
                   "inverted": any(g < 0 for g in result.meta.get("uuds_start", {}).get("gain", [])),
                   **evaluate(result.checkpoint, target)}
            rows.append(row)
            print(f"seed {seed} {name:30s} Dice {row['dice']:.4f} ES-Dice {row['es_dice']:.4f} "
                  f"{row['s_per_epoch']:.1f} s/epoch", flush=True)
            pd.DataFrame(rows).to_csv(out / f"results-{args.source}.csv", index=False)
    return pd.DataFrame(rows)


def table(results: pd.DataFrame) -> str:
    cols = ["dice", *sorted(c for c in results if c.startswith("dice[")), "es_dice", "s_per_epoch"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in METHODS:
        r = results[results["method"] == m]
        if len(r):
            cells = [f"{r[c].mean():.3f} ± {r[c].std(ddof=0):.3f}" for c in cols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    low = results.loc[results["method"] == "source only", "dice"].mean()
    high = results.loc[results["method"] == "supervised on target", "dice"].mean()
    for m in METHODS[1:-1]:
        v = results.loc[results["method"] == m, "dice"].mean()
        if np.isfinite(v) and high > low:
            lines.append(f"\n{m}: {100 * (v - low) / (high - low):.0f} % of the source-only → supervised gap")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--source", choices=("t1", "t2"), default="t1", help="source modality (the other is the target)")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=40, help="source-only and supervised training")
    p.add_argument("--adapt-epochs", type=int, default=20, help="pseudo-label and UUDS runs, from the source model")
    p.add_argument("--spacing", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    results = run(args)
    print(table(results))


if __name__ == "__main__":
    main()
