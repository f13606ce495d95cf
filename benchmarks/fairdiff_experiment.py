"""Seed 003's experiment on the fundus sample: balancing small groups with synthetic data.

The fundus sample generator (``fairseg sample fundus``) gives Black cases a larger cup and a
fainter rim (a documented group effect). From ``--cases`` cases, the training split keeps every
White case but only ``--minority`` Asian and Black cases; the test split keeps every case.
``fairseg synthesize`` trains the two generators on that training split once (seed 0) and
writes ``--per-group`` cases per group. Then, for each seed:

- **no balancing** (``--fairness none``);
- **repeat sample** (``--fairness equal-scale`` without synthetic data: small groups filled with
  intensity-augmented copies of their real cases);
- **equal scale + synthetic** (``--fairness equal-scale --synthetic``: filled with generated cases);
- **synthetic only** (trained on the generated cases alone: the generators' quality check).

Each model is evaluated on the real test split: Dice (mean of rim and cup), per-group Dice,
ES-Dice and ESSP-std (FairSeg's ddof 1), and the cup and rim ES-Dice the paper reports. The
masks are checked for plausibility (cup inside disc, vertical cup-to-disc ratio per group
against the real training masks). Prints markdown tables; writes ``<out>/results.csv``.

    python benchmarks/fairdiff_experiment.py --out /tmp/fairdiff --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from napari_fairseg.data.arrays import load_case
from napari_fairseg.data.manifest import Cohort, write_manifest
from napari_fairseg.data.points import cup_inside_disc, cup_to_disc_ratio
from napari_fairseg.data.readers import open_cohort
from napari_fairseg.data.synthetic import fundus_cohort_job
from napari_fairseg.inference.predict import Predictor
from napari_fairseg.metrics.groups import equity_summary
from napari_fairseg.models.checkpoint import load_checkpoint
from napari_fairseg.progress import run_job
from napari_fairseg.training.image_generator import ImageGeneratorConfig
from napari_fairseg.training.mask_generator import MaskGeneratorConfig
from napari_fairseg.training.synthesize import synthesize_job, with_synthetic
from napari_fairseg.training.trainer import TrainConfig, model_config_for, train_job, validate

METHODS = ("no balancing", "repeat sample", "equal scale + synthetic", "synthetic only")


def cohorts(args, out: Path) -> tuple[Cohort, Cohort]:
    """The sample with its small minorities (training) and every test case."""
    full_dir = out / "full"
    if not (full_dir / "train.txt").exists():
        run_job(fundus_cohort_job(full_dir, n_cases=args.cases, seed=0))
    full = open_cohort(full_dir)
    cases = full.cases
    keep = []
    for race, rows in cases[cases["split"] == "train"].groupby("race"):
        keep += rows["case_id"].tolist()[: (None if race == "White" else args.minority)]
    small = cases[(cases["split"] == "test") | cases["case_id"].isin(keep)].reset_index(drop=True)
    cohort = Cohort(small, full.kind, dict(full.classes), "fundus-small-minorities", list(full.notes))
    write_manifest(cohort, out / "small.csv")
    return open_cohort(out / "small.csv"), full


def plausibility(real: Cohort, synthetic: Cohort) -> pd.DataFrame:
    rows = []
    for name, c, ids in (("real", real, real.cases.loc[real.cases["split"] == "train", "case_id"]),
                         ("synthetic", synthetic, synthetic.case_ids)):
        for cid in ids:
            label = load_case(c, cid).label
            rows.append({"data": name, "race": c.row(cid)["race"], "cdr": cup_to_disc_ratio(label),
                         "cup_inside": cup_inside_disc(label), "disc_px": int((label > 0).sum())})
    return pd.DataFrame(rows)


def figure(real: Cohort, synthetic: Cohort, path: Path, n: int = 4) -> Path:
    """Per group, ``n`` real training cases then ``n`` synthetic ones, rim and cup outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(synthetic.cases["race"].unique())
    fig, axes = plt.subplots(len(groups), 2 * n, figsize=(2 * n * 1.3, len(groups) * 1.45))
    for r, group in enumerate(groups):
        rc = real.cases
        ids = [("real", real, c) for c in rc.loc[(rc["race"] == group) & (rc["split"] == "train"), "case_id"][:n]]
        sc = synthetic.cases
        ids += [("synthetic", synthetic, c) for c in sc.loc[sc["race"] == group, "case_id"][:n]]
        for c, (kind, cohort, cid) in enumerate(ids):
            case = load_case(cohort, cid)
            ax = axes[r, c]
            ax.imshow(case.image[0], cmap="gray")
            ax.contour(case.label >= 1, levels=[0.5], colors="lime", linewidths=0.6)
            ax.contour(case.label == 2, levels=[0.5], colors="deepskyblue", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(kind, fontsize=8)
        axes[r, 0].set_ylabel(group, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(ckpt: Path, cohort: Cohort) -> dict:
    ids = cohort.cases.loc[cohort.cases["split"] == "test", "case_id"].tolist()
    table = validate(Predictor.from_checkpoint(load_checkpoint(ckpt)), cohort, ids)
    table["dice_mean"] = table[["dice_rim", "dice_cup"]].mean(axis=1)
    s = equity_summary(table["dice_mean"], table["race"])
    row = {"dice": s["overall"], "es_dice": s["es"], "essp_std": s["essp_std"]}
    for cls in ("cup", "rim"):
        row[f"es_dice_{cls}"] = equity_summary(table[f"dice_{cls}"], table["race"])["es"]
    for g, v in table.groupby("race")["dice_mean"]:
        row[f"dice[{g}]"] = float(v.mean())
    return row


def run(args) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    small, _ = cohorts(args, out)
    t = time.perf_counter()
    masks = MaskGeneratorConfig(steps=args.mask_steps)
    images = ImageGeneratorConfig(steps=args.image_steps, size=args.size, width=args.width)
    timings: dict[str, float] = {}
    stage_start: dict[str, float] = {}

    def clock(p):
        stage = p.stage.split(":")[0]
        stage_start.setdefault(stage, time.perf_counter())
        timings[stage] = time.perf_counter() - stage_start[stage]

    synthetic = run_job(synthesize_job(small, "race", args.per_group, out / "synthetic", masks=masks, images=images),
                        on_progress=clock)
    timings["total"] = time.perf_counter() - t
    print(f"generators and {len(synthetic)} cases: {timings}", flush=True)
    checks = plausibility(small, synthetic)
    figure(small, synthetic, out / "real_vs_synthetic.png")
    mc = model_config_for(small, network="unet", features=tuple(args.features))
    runs = {"no balancing": (small, "none"), "repeat sample": (small, "equal-scale"),
            "equal scale + synthetic": (with_synthetic(small, synthetic), "equal-scale"),
            "synthetic only": (synthetic, "none")}
    rows = []
    for seed in args.seeds:
        for name in METHODS:
            cohort, fairness = runs[name]
            config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                                 fairness=fairness, group_attribute="race", device="cpu")
            t = time.perf_counter()
            result = run_job(train_job(cohort, mc, config, out=out / f"{name.replace(' ', '_')}-seed{seed}.pt"))
            row = {"method": name, "seed": seed, "wall_s": time.perf_counter() - t,
                   "s_per_epoch": float(result.log["seconds"].mean()), **evaluate(result.checkpoint, small)}
            rows.append(row)
            print(f"seed {seed} {name:25s} Dice {row['dice']:.4f} ES-Dice {row['es_dice']:.4f} "
                  f"ESSP-std {row['essp_std']:.4f} {row['s_per_epoch']:.1f} s/epoch", flush=True)
            pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    return pd.DataFrame(rows), checks, timings


def table(results: pd.DataFrame) -> str:
    cols = ["dice", *sorted(c for c in results if c.startswith("dice[")), "es_dice", "essp_std", "es_dice_cup",
            "es_dice_rim", "s_per_epoch"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in METHODS:
        r = results[results["method"] == m]
        if len(r):
            lines.append(f"| {m} | " + " | ".join(f"{r[c].mean():.3f} ± {r[c].std(ddof=0):.3f}" for c in cols) + " |")
    return "\n".join(lines)


def plausibility_table(checks: pd.DataFrame) -> str:
    lines = ["| race | data | n | CDR mean ± std | cup inside disc |", "|---|---|---|---|---|"]
    for (race, data), r in checks.groupby(["race", "data"]):
        lines.append(f"| {race} | {data} | {len(r)} | {r['cdr'].mean():.3f} ± {r['cdr'].std(ddof=0):.3f} | "
                     f"{100 * r['cup_inside'].mean():.0f} % |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--minority", type=int, default=10, help="training cases kept for Asian and Black")
    p.add_argument("--per-group", type=int, default=100)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--features", type=lambda s: [int(x) for x in s.split(",")], default=[8, 16, 32])
    p.add_argument("--mask-steps", type=int, default=2000)
    p.add_argument("--image-steps", type=int, default=2000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    args = p.parse_args(argv)
    results, checks, timings = run(args)
    print(table(results))
    print()
    print(plausibility_table(checks))
    print(f"\ngenerator training and sampling on this machine (s): {timings}")


if __name__ == "__main__":
    main()
