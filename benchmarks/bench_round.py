"""Wall time of one full active-learning round on the sample brain cohort, on this machine.

A round is what ``fairseg suggest`` does after new labels: fine-tune the current model on the
labelled set, evaluate it on the held-out split (Dice, per-group Dice, Δ, ESSP), score the
unlabelled pool and suggest a batch. Set-up: the sample brain cohort (24 volumes of
64×64×48; 16 in the pool split, 8 held out), 10 pool cases labelled (5 per group), the bundled
light 3D U-Net fine-tuned for ``RoundConfig``'s default 20 epochs, WLE, batch 4.

Then, with that model fixed, a suggest-only round per strategy, as a ratio of its scoring and
selection time to WLE's (lean ROI-only scoring): what choosing another strategy costs.

Run: ``.venv/bin/python benchmarks/bench_round.py`` (``--repeats N``, default 3).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from timing import brain_sample, median

from napari_fairseg.active import STRATEGIES, Project, RoundConfig, round_job
from napari_fairseg.data.arrays import load_case
from napari_fairseg.progress import run_job


def labelled_project(root: Path, cohort) -> Project:
    project = Project.create(root, cohort)
    train = cohort.cases[cohort.cases["split"] == "train"]
    for g in sorted(train["group"].unique()):
        for cid in train.loc[train["group"] == g, "case_id"].head(5):
            project.save_annotation(cid, load_case(cohort, cid).label, author="bench", source="imported")
    return project


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cohort = brain_sample()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; sample brain cohort, "
          f"{len(cohort)} volumes of 64×64×48")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            with labelled_project(Path(tmp) / f"p{r}", cohort) as project:
                res = run_job(round_job(project, RoundConfig(strategy="wle", seed=r, device="cpu"), train=True,
                                        model="brain"))
                rounds.append(res.metrics)
        m = {k: median([x[k] for x in rounds]) for k in ("train_seconds", "eval_seconds", "score_seconds",
                                                          "seconds")}
        last = rounds[-1]
        print(f"\n[one full round] WLE, {last['n_labelled']} labelled, {last['n_pool']} in the pool, "
              f"{last['n_eval']} held out; median of {args.repeats}")
        print(f"  fine-tune (20 epochs)              {m['train_seconds']:6.2f} s")
        print(f"  evaluate (held-out + labelled set) {m['eval_seconds']:6.2f} s")
        print(f"  score pool + suggest               {m['score_seconds']:6.2f} s")
        print(f"  whole round                        {m['seconds']:6.2f} s  (fine-tuning is "
              f"{100 * m['train_seconds'] / m['seconds']:.0f}% of it)")

        with labelled_project(Path(tmp) / "strategies", cohort) as project:
            run_job(round_job(project, RoundConfig(strategy="wle", device="cpu"), train=True, model="brain"))
            times = {}
            for _ in range(args.repeats):
                for name in STRATEGIES:
                    res = run_job(round_job(project, RoundConfig(strategy=name, device="cpu"), train=False))
                    times.setdefault(name, []).append(res.metrics["score_seconds"])
        base = median(times["wle"])
        print(f"\n[score + suggest per strategy] same model, {last['n_pool']} pool volumes; ratio to WLE")
        for name in STRATEGIES:
            t = median(times[name])
            print(f"  {name:<11} {t:6.3f} s  {t / base:5.2f}×")


if __name__ == "__main__":
    main()
