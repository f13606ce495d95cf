"""Seed 004's workflow end to end on the synthetic breast sample (MAMA-MIA layout).

1. Generate the cohort (``fairseg sample breast``: 3-phase DCE-like volumes, some stored in
   LPS or with permuted axes, a breast box per patient, the clinical table and the splits),
   timing one case.
2. Train the same network twice on the ``train`` split with ``train_job`` — plain, and with
   seed 004's divergence reweighting (``--fairness divergence``: DivExplorer subgroups over age,
   menopausal status and breast density, α = 0.2) — on patches (``ModelConfig(patch_size=…)``).
3. Predict the ``test`` split with each checkpoint (``fairseg predict``), then apply seed 004's
   post-processing: predictions outside the patient's breast box are removed.
4. Audit each with the MAMA-MIA scores (``fairseg audit``'s job with ``--hd voxel``): PS, FS, TS,
   and Dice per breast density (the sample's documented group effect: denser breasts show their
   lesion with less contrast). A model-free reference row first: the relative-enhancement
   threshold ((post − pre) / pre inside the breast box) that is best on the training cases.

Prints one table. Every size is an argument, so it runs small on a laptop CPU and at the
sample's real size (448×448×120, ~1,500 cases in MAMA-MIA) where there is time and a GPU:

    .venv/bin/python benchmarks/bench_breast.py                      # small: 24 cases of 96×96×32
    .venv/bin/python benchmarks/bench_breast.py --cases 120 --shape 448,448,120 --patch 128,128,64 \\
        --batch-size 2 --lr 1e-3 --epochs 100 --device cuda

At the small default (light U-Net, 32×32×16 patches, batch 8) the network finds the lesions
only after about 50 epochs (validation Dice 0 before, ~0.5 at 60): fewer epochs give an
all-empty prediction, Dice 0 for both objectives.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from napari_fairseg.cli import main as fairseg
from napari_fairseg.data.arrays import load_case, save_label
from napari_fairseg.data.readers import breast_info_path, open_cohort, read_breast_box
from napari_fairseg.data.synthetic import make_sample
from napari_fairseg.progress import run_job
from napari_fairseg.report.audit import AuditConfig, audit_job
from napari_fairseg.training import TrainConfig, model_config_for, train_job

ATTRIBUTES = ("age", "menopausal_status", "breast_density")


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(","))


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(","))


def mask_to_breast_box(cohort, pred_dir: Path, out_dir: Path, ids) -> None:
    """Seed 004's post-processing: zero every predicted voxel outside the breast box."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        img = nib.load(pred_dir / f"{cid}.nii.gz")
        data = np.asarray(img.dataobj)
        keep = np.zeros(data.shape, bool)
        keep[read_breast_box(breast_info_path(cohort, cid), shape=data.shape)] = True
        nib.save(nib.Nifti1Image((data * keep).astype(np.uint8), img.affine), str(out_dir / f"{cid}.nii.gz"))


def relative_enhancement(cohort, cid):
    """A case's first-phase wash-in relative to the pre-contrast image, inside its breast box."""
    case = load_case(cohort, cid)
    pre, post = case.image[0], case.image[1]
    enh = np.zeros(pre.shape, np.float32)
    box = read_breast_box(breast_info_path(cohort, cid), shape=pre.shape)
    enh[box] = (post[box] - pre[box]) / (pre[box] + 0.1 * np.percentile(pre, 99))
    return case, enh


def threshold_baseline(cohort, train_ids, test_ids, out_dir: Path) -> float:
    """A model-free reference: the relative-enhancement threshold that gives the best mean Dice
    on the training cases, applied to the test cases (written like predictions)."""
    grid = np.linspace(0.2, 3.0, 29)
    dice = np.zeros(len(grid))
    for cid in train_ids:
        case, enh = relative_enhancement(cohort, cid)
        truth = case.label > 0
        for k, t in enumerate(grid):
            pred = enh > t
            dice[k] += 2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1)
    best = float(grid[int(np.argmax(dice))])
    out_dir.mkdir(parents=True, exist_ok=True)
    for cid in test_ids:
        case, enh = relative_enhancement(cohort, cid)
        save_label(cohort, out_dir / f"{cid}.nii.gz", (enh > best).astype(np.uint8), like=case)
    return best


def audit(cohort, pred_dir: Path) -> dict:
    config = AuditConfig(attributes=ATTRIBUTES, split="test", hd_mode="voxel", mamamia=True, n_boot=10,
                         min_group_size=1)
    result = run_job(audit_job(cohort, pred_dir, config))
    scores = result.summary["mamamia"]["foreground"]
    per = result.per_case
    return {"dice": float(per["dice_foreground"].mean()), "normhd": float(per["normhd_foreground"].mean()),
            "ps": scores["performance"], "fs": scores["fairness"], "ts": scores["total"],
            "density": per.groupby(per["breast_density"].astype(str))["dice_foreground"].mean().to_dict()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=24, help="patients in the cohort (default 24)")
    ap.add_argument("--shape", type=ints, default=(96, 96, 32), help="voxels X,Y,Z (default 96,96,32)")
    ap.add_argument("--spacing", type=floats, default=None,
                    help="mm along X,Y,Z (default: the real 314×314×180 mm field of view over --shape)")
    ap.add_argument("--patch", type=ints, default=(32, 32, 16), help="training patch (default 32,32,16)")
    ap.add_argument("--network", default="light_unet")
    ap.add_argument("--features", type=ints, default=None, help="feature widths, e.g. 8,16")
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--min-support", type=float, default=0.1, help="DivExplorer minimum support")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--time-full-case", action="store_true",
                    help="also time writing two cases at the sample's real size, 448×448×120 (~1 GB of memory)")
    ap.add_argument("--keep", help="keep the cohort, checkpoints, predictions here (default: a temporary folder)")
    args = ap.parse_args()
    spacing = args.spacing or tuple(f / n for f, n in zip((313.6, 313.6, 180.0), args.shape, strict=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}")

    if args.time_full_case:
        with tempfile.TemporaryDirectory() as tmp:
            t, cpu = time.perf_counter(), time.process_time()
            make_sample("breast", tmp, n_cases=2, seed=args.seed)
            print(f"two full-size cases (3×448×448×120 int16, gzip level 1): {time.perf_counter() - t:.1f} s "
                  f"wall, {time.process_time() - cpu:.1f} s CPU (all threads), "
                  f"{sum(p.stat().st_size for p in Path(tmp).rglob('*.nii.gz')) / 2e6:.0f} MB a case")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        t, cpu = time.perf_counter(), time.process_time()
        cohort = make_sample("breast", root / "cohort", n_cases=args.cases, seed=args.seed, shape=args.shape,
                             spacing=spacing)
        gen, gen_cpu = time.perf_counter() - t, time.process_time() - cpu
        cohort = open_cohort(cohort.source)
        test = cohort.cases.loc[cohort.cases["split"] == "test", "case_id"].tolist()
        n_train = len(cohort) - len(test)
        print(f"cohort: {len(cohort)} cases of 3×{'×'.join(map(str, args.shape))} at "
              f"{'×'.join(f'{s:.2f}' for s in spacing)} mm ({n_train} train, {len(test)} test), "
              f"generated and written in {gen:.1f} s wall, {gen_cpu:.1f} s CPU")
        overrides = {"patch_size": args.patch} | ({"features": args.features} if args.features else {})
        model_config = model_config_for(cohort, network=args.network, **overrides)
        train_ids = [c for c in cohort.case_ids if c not in test]
        t = time.perf_counter()
        best = threshold_baseline(cohort, train_ids, test, root / "pred_threshold")
        rows = [{"objective": f"threshold {best:.1f}", "train_s": time.perf_counter() - t, "predict_s": 0.0,
                 **audit(cohort, root / "pred_threshold")}]
        for fairness in ("none", "divergence"):
            config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, fairness=fairness,
                                 attributes=ATTRIBUTES, group_attribute="breast_density",
                                 min_support=args.min_support, seed=args.seed, device=args.device)
            ckpt = root / f"{fairness}.pt"
            t = time.perf_counter()
            run_job(train_job(cohort, model_config, config, out=ckpt))
            train_s = time.perf_counter() - t
            raw, boxed = root / f"pred_{fairness}", root / f"pred_{fairness}_box"
            t = time.perf_counter()
            assert fairseg(["--quiet", "predict", str(cohort.source), "--model", str(ckpt), "--out", str(raw),
                            "--split", "test", "--uncertainty", "none", "--no-maps", "--device", args.device]) == 0
            mask_to_breast_box(cohort, raw, boxed, test)
            predict_s = time.perf_counter() - t
            rows.append({"objective": fairness, "train_s": train_s, "predict_s": predict_s, **audit(cohort, boxed)})

    print(f"\nseed 004 on the breast sample: {args.network}, {args.epochs} epochs, patch {args.patch}, "
          f"test split ({len(test)} cases), predictions masked to the breast box; MAMA-MIA scores "
          f"(NormHD from voxel HD95), fairness variables {', '.join(ATTRIBUTES)}")
    densities = sorted({d for r in rows for d in r["density"]})
    head = ["objective", "Dice", "NormHD", "PS", "FS", "TS", *(f"Dice {d}" for d in densities), "train s",
            "predict s"]
    table = [[r["objective"], *(f"{r[k]:.4f}" for k in ("dice", "normhd", "ps", "fs", "ts")),
              *(f"{r['density'].get(d, float('nan')):.4f}" for d in densities), f"{r['train_s']:.1f}",
              f"{r['predict_s']:.1f}"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=True)]
    for line in (head, ["-" * w for w in widths], *table):
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) + " |")

if __name__ == "__main__":
    main()
