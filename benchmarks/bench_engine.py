"""Benchmarks of the segmentation engine, measured in one run on the same decoded volumes.

1. Pool scoring on the sample brain cohort (24 volumes of 64×64×48) with the bundled light
   3D U-Net: the bare forward pass over the pool vs full scoring (forward + probabilities +
   label + dilated ROI + voxel entropy + masked scaled entropy, copied back to numpy), as
   active learning scores a pool (``maps=False``: entropy inside the ROI only) and with every
   whole-image map kept (as the viewer does). Target: scoring ≤ 1.25× the bare forward time.
2. The same scoring with decoding from disk included (``predict_pool_job``), with the next
   batch decoded in a background thread and without.
3. Peak memory of sliding-window inference (with entropy) on a 3-channel 320×320×128 volume,
   in a fresh subprocess. Target: ≤ 3 GB on the CPU.
4. Where CUDA is available: 1 and 3 on the GPU, with and without mixed precision.

Run: ``.venv/bin/python benchmarks/bench_engine.py`` (``--quick`` for a smaller pool).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch
from timing import brain_sample, median, timed

from napari_fairseg.data.arrays import load_image
from napari_fairseg.inference import InferenceConfig, Predictor, predict_pool_job
from napari_fairseg.inference.predict import _split
from napari_fairseg.models import load_checkpoint, pad_to_divisible, size_divisor
from napari_fairseg.models.preprocess import normalise_intensity
from napari_fairseg.models.zoo import bundled_checkpoint
from napari_fairseg.progress import run_job


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_pool(cohort, ckpt, *, device="cpu", amp=False, batch=4, repeats=9):
    settings = InferenceConfig(device=device, amp=amp, batch_size=batch, uncertainty="entropy")
    predictor = Predictor.from_checkpoint(ckpt, settings)
    scorer = Predictor(predictor.model, ckpt.config, InferenceConfig(**{**settings.__dict__, "maps": False}))
    dev = predictor.device
    ids = cohort.case_ids
    t = time.perf_counter()
    volumes = [normalise_intensity(load_image(cohort, c).image, ckpt.config.intensity) for c in ids]
    decode_s = time.perf_counter() - t
    batches = [torch.from_numpy(np.stack(volumes[i:i + batch])) for i in range(0, len(volumes), batch)]
    div = size_divisor(ckpt.config)

    def bare():
        with torch.inference_mode(), torch.autocast("cuda", enabled=amp and dev.type == "cuda"):
            for x in batches:
                xp, crop = pad_to_divisible(x.to(dev), div)
                predictor.model(xp)[crop]
        sync(dev)

    def score(p):
        for i, x in enumerate(batches):
            _split(p.predict(x), ids[i * batch:(i + 1) * batch])
        sync(dev)

    bare(), score(predictor), score(scorer)  # warm-up
    # interleaved A/B/C rounds, medians: drift on a shared machine hits all three alike
    rounds = {"bare": [], "score": [], "maps": []}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("score", lambda: score(scorer)), ("maps", lambda: score(predictor))):
            t = time.perf_counter()
            fn()
            rounds[name].append(time.perf_counter() - t)
    t_bare, t_score, t_maps = (float(np.median(rounds[k])) for k in ("bare", "score", "maps"))
    t_disk = {}
    for mode in ("on", "off"):
        p = Predictor(predictor.model, ckpt.config, InferenceConfig(**{**scorer.settings.__dict__, "prefetch": mode}))
        t_disk[mode], _ = timed(lambda p=p: run_job(predict_pool_job(cohort, p, ids)), reduce=median)
    return {"device": predictor.device_name, "amp": amp, "cases": len(ids), "batch": batch,
            "bare_forward_s": t_bare, "scoring_s": t_score, "ratio": t_score / t_bare, "maps_s": t_maps,
            "decode_s": decode_s, "prefetch_on_s": t_disk["on"], "prefetch_off_s": t_disk["off"],
            "auto": "on" if scorer.prefetch else "off"}


MEMORY_CHILD = r"""
import json, resource, sys, time, torch
from napari_fairseg.inference import InferenceConfig, Predictor
from napari_fairseg.models import ModelConfig, build_network
device, amp = sys.argv[1], sys.argv[2] == "1"
cfg = ModelConfig(in_channels=3, patch_size=(96, 96, 64))
pred = Predictor(build_network(cfg), cfg, InferenceConfig(device=device, amp=amp, sw_batch_size=2))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
x = torch.randn(1, 3, 320, 320, 128)
if pred.device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
out = pred.predict(x)
ms = out["masked_entropy"].item()
if pred.device.type == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
gpu = torch.cuda.max_memory_allocated() / 2**30 if pred.device.type == "cuda" else None
print(json.dumps({"seconds": dt, "peak_rss_gb": peak, "rss_before_gb": rss0, "gpu_peak_gb": gpu}))
"""


def bench_memory(device="cpu", amp=False):
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, device, "1" if amp else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8 cases, no memory benchmark")
    args = ap.parse_args()
    cohort = brain_sample()
    if args.quick:
        cohort.cases = cohort.cases.head(8)
    ckpt = load_checkpoint(bundled_checkpoint("brain"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    runs = [("cpu", False)] + ([("cuda", False), ("cuda", True)] if torch.cuda.is_available() else [])
    for (device, amp), batch in ((r, b) for r in runs for b in (1, 4)):
        r = bench_pool(cohort, ckpt, device=device, amp=amp, batch=batch)
        print(f"\n[pool scoring] {r['cases']} brain volumes 64×64×48, batch {r['batch']}, {r['device']}"
              f"{', AMP' if amp else ''}")
        print(f"  bare forward            {r['bare_forward_s']:.3f} s")
        print(f"  pool scoring            {r['scoring_s']:.3f} s   ratio {r['ratio']:.2f}× (target ≤ 1.25×)"
              "   label + masked scaled entropy")
        print(f"  scoring + all maps      {r['maps_s']:.3f} s   ratio {r['maps_s'] / r['bare_forward_s']:.2f}×"
              "   + probability, entropy, ROI maps, mean entropy")
        print(f"  decoding alone          {r['decode_s']:.3f} s")
        print(f"  scoring + decoding      {r['prefetch_on_s']:.3f} s with prefetch thread, "
              f"{r['prefetch_off_s']:.3f} s without (auto picks {r['auto']} here)")
    if not args.quick:
        for device, amp in runs:
            m = bench_memory(device, amp)
            extra = f", GPU peak {m['gpu_peak_gb']:.2f} GB" if m["gpu_peak_gb"] is not None else ""
            print(f"\n[sliding window] 3×320×320×128, patch 96×96×64, {device}{' AMP' if amp else ''}: "
                  f"{m['seconds']:.1f} s, peak RSS {m['peak_rss_gb']:.2f} GB (process before the volume: "
                  f"{m['rss_before_gb']:.2f} GB){extra}; target ≤ 3 GB")


if __name__ == "__main__":
    main()
