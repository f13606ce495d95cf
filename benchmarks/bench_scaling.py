"""Throughput of the training data path with loader workers, and of training on several processes.

1. **Loader workers.** The persistent cache is filled once, then one epoch of training reads —
   MONAI positive/negative crop to the patch, flips, light affine, intensity augmentation,
   collation — is drawn through ``training.data.loader`` with 0 and with 2 worker processes;
   no network runs, so this is the data path alone. Patches per second and their ratio.
2. **DDP processes.** ``fairseg train --nproc 2`` (two gloo processes under torchrun, one
   thread each) against ``--nproc 1`` (one process, two threads) on the same cohort, the same
   epochs and the same global batch: training cases per second over the epochs after the
   first (whose time includes compiling and the cache), from the runs' logs.

Both measured in this one run on the same cohort (bright balls in noise, ``--size`` voxels at
1×1×1.5 mm). Run: ``.venv/bin/python benchmarks/bench_scaling.py [--size 170,170,76] [--cases 16]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from timing import write_cohort


def loader_rate(manifest: Path, cache: Path, workers: int, patch, epochs: int = 2) -> float:
    """Augmented patches per second of ``epochs`` epochs (batches of 2) through the loader."""
    from napari_fairseg.data.readers import open_cohort
    from napari_fairseg.training import data as streams
    from napari_fairseg.training import model_config_for

    cohort = open_cohort(manifest)
    config = model_config_for(cohort, patch_size=patch)
    pipeline = streams.pipeline_for(cohort, model_config=config)
    cases = streams.preprocessed(cohort, cohort.case_ids, pipeline, cache=cache)
    for _ in streams.warm(cases):  # the cache is filled before timing (training does so too)
        pass
    dataset = streams.TrainingSet(cases, config)
    rng = np.random.default_rng(0)
    n = 0
    t = time.perf_counter()
    for _ in range(epochs):
        keys = streams.epoch_keys([(i, False) for i in range(len(cases))], rng)
        for batch in streams.loader(dataset, batches=[keys[i:i + 2] for i in range(0, len(keys), 2)],
                                    workers=workers):
            n += batch["image"].shape[0]
    return n / (time.perf_counter() - t)


def ddp_rate(manifest: Path, out: Path, nproc: int, patch: str, epochs: int) -> float:
    """Training cases per second of ``fairseg train --nproc nproc`` after its first epoch."""
    threads = str(max(1, (os.cpu_count() or 2) // nproc))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    model = out / f"ddp{nproc}.pt"
    subprocess.run([str(Path(sys.executable).with_name("fairseg")), "--quiet", "train", str(manifest), "--out",
                    str(model), "--epochs", str(epochs), "--patch", patch, "--batch-size", "4", "--device", "cpu",
                    "--val-fraction", "0", "--nproc", str(nproc)], check=True, env=env)
    log = pd.read_csv(model.with_name(model.stem + ".log.csv"))
    from napari_fairseg.models import load_checkpoint

    n_train = load_checkpoint(model).meta["n_train"]
    return n_train / float(log["seconds"].iloc[1:].median())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="170,170,76", help="volume size in voxels")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--patch", default="64,64,48")
    p.add_argument("--epochs", type=int, default=4, help="DDP runs: epochs (the first is not timed)")
    args = p.parse_args()
    size = tuple(int(s) for s in args.size.split(","))
    patch = tuple(int(s) for s in args.patch.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_cohort(Path(tmp) / "cohort", args.cases, size)
        shape = "×".join(map(str, size))
        rates = {w: loader_rate(manifest, Path(tmp) / "cache", w, patch) for w in (0, 2)}
        print(f"loader, {args.cases} cases of {shape}, patch {args.patch}: {rates[0]:.1f} patches/s with 0 workers, "
              f"{rates[2]:.1f} with 2 (×{rates[2] / rates[0]:.2f})", flush=True)
        ddp = {n: ddp_rate(manifest, Path(tmp), n, args.patch, args.epochs) for n in (1, 2)}
        print(f"training, light U-Net, batch 4: {ddp[1]:.2f} cases/s in 1 process (2 threads), {ddp[2]:.2f} in 2 "
              f"DDP processes (gloo, 1 thread each) (×{ddp[2] / ddp[1]:.2f}); {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
