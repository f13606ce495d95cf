"""The ``fairseg`` command line: a thin skin over the headless core.

Subcommands: ``audit`` (fairness audit of predictions), ``sample`` (write a sample cohort),
``demo`` (sample cohort → atlas-baseline predictions → audit report).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import Cancelled, FairSegError
from .progress import Progress, run_job


class ProgressBar:
    """A one-line text progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width, self.stage, self.t0 = stream, width, None, time.perf_counter()
        self.tty = getattr(stream, "isatty", lambda: False)()

    def __call__(self, p: Progress) -> None:
        if p.stage != self.stage and self.stage is not None and self.tty:
            self.stream.write("\n")
        new_stage = p.stage != self.stage
        self.stage = p.stage
        done = p.total is not None and p.done >= p.total
        if not self.tty and not (new_stage or done):
            return
        if p.total:
            fill = int(self.width * p.done / p.total)
            bar = f"[{'#' * fill}{'.' * (self.width - fill)}] {p.done}/{p.total}"
        else:
            bar = f"{p.done}"
        line = f"{p.stage:<10} {bar} {p.message[:40]:<40} {time.perf_counter() - self.t0:6.1f}s"
        self.stream.write(("\r" if self.tty else "") + line + ("" if self.tty else "\n"))
        self.stream.flush()

    def close(self):
        if self.tty and self.stage is not None:
            self.stream.write("\n")


def _run(job, quiet: bool):
    bar = None if quiet else ProgressBar()
    try:
        return run_job(job, on_progress=bar)
    finally:
        if bar:
            bar.close()


def _cmd_audit(args) -> int:
    from .data.readers import open_cohort
    from .report.audit import AuditConfig, audit_job, write_audit

    cohort = open_cohort(args.cohort, metadata=args.metadata)
    attrs = tuple(a.strip() for a in args.attributes.split(",") if a.strip()) if args.attributes else ()
    config = AuditConfig(attributes=attrs, split=args.split, hd_mode=args.hd, min_support=args.min_support,
                         min_group_size=args.min_group_size, n_boot=args.n_boot, std_ddof=args.std_ddof,
                         mamamia=True if args.mamamia else None, empty_score=args.empty_score)
    audit = _run(audit_job(cohort, args.predictions, config), args.quiet)
    paths = write_audit(audit, args.out)
    _print_headline(audit)
    print(f"report: {paths['report']}")
    return 0


def _print_headline(audit) -> None:
    s = audit.summary
    for a, info in s["attributes"].items():
        for mc, e in info["metrics"].items():
            if mc.startswith("dice_"):
                print(f"{a:>22} {mc:<16} overall {e['overall']:.4f}  Δ {e['delta']:.4f}  ES {e['es']:.4f}  "
                      f"worst group {e['worst_group']}")


def _sample_dir(kind: str, seed: int, cases: int | None, bias: str) -> Path:
    from .data.synthetic import cache_dir

    return cache_dir() / f"{kind}-{bias if kind == 'brain' else 'fairseg'}-seed{seed}-n{cases or 'default'}"


def _make_sample(kind, out, *, cases, seed, bias, quiet):
    from .data.synthetic import brain_cohort_job, fundus_cohort_job

    kwargs = {"seed": seed}
    if cases:
        kwargs["n_cases"] = cases
    if kind == "brain":
        return _run(brain_cohort_job(out, bias=bias, **kwargs), quiet)
    return _run(fundus_cohort_job(out, **kwargs), quiet)


def _cmd_sample(args) -> int:
    cohort = _make_sample(args.kind, args.out, cases=args.cases, seed=args.seed, bias=args.bias, quiet=args.quiet)
    where = Path(args.out) / "manifest.csv" if args.kind == "brain" else Path(args.out)
    print(f"wrote {len(cohort)} {args.kind} cases; open with: fairseg audit {where} ...")
    return 0


def _cmd_demo(args) -> int:
    from .baseline import atlas_predictions_job
    from .data.readers import open_cohort
    from .report.audit import AuditConfig, audit_job, write_audit

    out = Path(args.out)
    shipped = Path(__file__).resolve().parent.parent / "sample_data" / args.kind
    if args.kind == "fundus" and shipped.is_dir():
        cohort_path = shipped
        print(f"cohort: bundled fundus sample {shipped}")
    else:
        cohort_path = _sample_dir(args.kind, 0, None, "strong")
        if not (cohort_path / "manifest.csv").is_file() and not (cohort_path / "train.txt").is_file():
            print(f"cohort: generating the {args.kind} sample (first use) in {cohort_path}")
            _make_sample(args.kind, cohort_path, cases=None, seed=0, bias="strong", quiet=args.quiet)
        else:
            print(f"cohort: cached {args.kind} sample {cohort_path}")
        if args.kind == "brain":
            cohort_path = cohort_path / "manifest.csv"
    cohort = open_cohort(cohort_path)
    preds = out / "predictions"
    print("predictions: atlas baseline (majority label of the training cases) -> " + str(preds))
    _run(atlas_predictions_job(cohort, preds), args.quiet)
    attrs = ("group", "sex", "age") if args.kind == "brain" else ("race", "gender", "age", "ethnicity", "language")
    audit = _run(audit_job(cohort, preds, AuditConfig(attributes=attrs, split="test", min_group_size=5)), args.quiet)
    paths = write_audit(audit, out / "audit")
    _print_headline(audit)
    print(f"report: {paths['report']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairseg", description=__doc__.splitlines()[0])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("audit", help="fairness audit of predictions against a cohort's labels")
    a.add_argument("cohort", help="manifest CSV or dataset folder (NIfTI, images, FairSeg npz, MAMA-MIA)")
    a.add_argument("--predictions", required=True, help="folder of predictions named <case_id> in the cohort's format")
    a.add_argument("--attributes", default="", help="comma-separated attributes (default: all)")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--metadata", help="metadata table (CSV/XLSX) joined by case id")
    a.add_argument("--split", help="audit only this split (train/val/test/pool)")
    a.add_argument("--hd", choices=["mm", "voxel", "none"], default="mm", help="HD95 units, or none (default mm)")
    a.add_argument("--min-support", type=float, default=0.05, help="subgroup discovery minimum support")
    a.add_argument("--min-group-size", type=int, default=10, help="flag groups smaller than this")
    a.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs")
    a.add_argument("--std-ddof", type=int, default=1, help="ddof of the ESSP-std variant")
    a.add_argument("--empty-score", type=float, default=1.0, help="Dice/IoU when both masks are empty")
    a.add_argument("--mamamia", action="store_true", help="also compute MAMA-MIA PS/FS/TS")
    a.set_defaults(func=_cmd_audit)

    s = sub.add_parser("sample", help="write a synthetic sample cohort")
    s.add_argument("kind", choices=["brain", "fundus"])
    s.add_argument("--out", required=True)
    s.add_argument("--cases", type=int, help="number of cases (default 24 brain, 60 fundus)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bias", choices=["strong", "weak"], default="strong", help="brain Group 1 deformation")
    s.set_defaults(func=_cmd_sample)

    d = sub.add_parser("demo", help="audit a sample cohort with atlas-baseline predictions")
    d.add_argument("--out", default="demo_output")
    d.add_argument("--kind", choices=["brain", "fundus"], default="brain")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FairSegError, FileNotFoundError) as exc:
        print(f"fairseg: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled as exc:
        print(f"fairseg: {exc}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
