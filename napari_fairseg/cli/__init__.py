"""The ``fairseg`` command line: a thin skin over the headless core.

Subcommands: ``train`` (train or fine-tune a network, optionally with a fairness objective),
``adapt`` (adapt a model to an unlabelled target cohort, seed 002),
``predict`` (predictions and uncertainty maps), ``audit`` (fairness audit of predictions),
``sample`` (write a sample cohort), ``demo`` (sample cohort → bundled network → audit report),
and active learning (:mod:`.active`): ``project`` (init / status / import / export), ``suggest``
(one round: fine-tune, evaluate, suggest), ``label`` (save an annotation version) and
``simulate`` (seed 001's experiment).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..data.classes import parse_classes
from ..errors import Cancelled, FairSegError, InputDataError
from ..options import (
    AUDIT,
    BRAIN_FIELDS,
    BRAIN_MODALITIES,
    EMPTY_RULES,
    HD_MODES,
    IMAGE_GENERATOR,
    INFERENCE,
    MASK_GENERATOR,
    MODEL,
    NETWORKS,
    OBJECTIVES,
    TRAIN,
    TRAIN_LOSSES,
    UNCERTAINTY,
    UUDS_POLARITIES,
    UUDS_TRANSLATIONS,
)
from .common import DEVICE_HELP, parse_floats, parse_ints, parse_names, run_with_bar


def _cmd_audit(args) -> int:
    from ..data.manifest import refuse_overwriting_inputs
    from ..data.readers import open_cohort
    from ..report.audit import AuditConfig, audit_job, write_audit

    cohort = open_cohort(args.cohort, metadata=args.metadata, classes=parse_classes(args.classes))
    # nor may the report land on the predictions it audits (a heatmap PNG can bear a prediction's name)
    if not Path(args.predictions).is_dir():
        raise InputDataError(args.predictions, "--predictions is not a folder (run fairseg predict first: it "
                             "writes one prediction per case there)")
    refuse_overwriting_inputs(args.out, cohort, also=[p for p in (args.metadata, args.predictions) if p])
    attrs = tuple(a.strip() for a in args.attributes.split(",") if a.strip()) if args.attributes else ()
    config = AuditConfig(attributes=attrs, split=args.split, hd_mode=args.hd, min_support=args.min_support,
                         min_group_size=args.min_group_size, n_boot=args.n_boot, std_ddof=args.std_ddof,
                         mamamia=True if args.mamamia else None, empty_score=args.empty_score)
    audit = run_with_bar(audit_job(cohort, args.predictions, config), args.quiet)
    paths = write_audit(audit, args.out)
    _print_headline(audit)
    print(f"report: {paths['report']}")
    return 0


def _print_headline(audit) -> None:
    s = audit.summary
    if not audit.attributes:
        print("no attributes (no attribute columns, no metadata table): the report holds overall metrics only; "
              "give one with --metadata to audit groups")
        for mc, v in s["overall"].items():
            if mc.startswith("dice_"):
                print(f"{'overall':>22} {mc:<16} {v:.4f}")
    for a, info in s["attributes"].items():
        for mc, e in info["metrics"].items():
            if mc.startswith("dice_"):
                print(f"{_shown(a):>22} {_shown(mc):<16} overall {_num(e['overall'])}  Δ {_num(e['delta'])}  "
                      f"ES {_num(e['es'])}  worst group {_shown(e['worst_group'])}")
    for name, mm in s.get("mamamia", {}).items():
        print(f"{'MAMA-MIA':>22} {_shown(name):<16} PS {_num(mm['performance'])}  FS {_num(mm['fairness'])}  "
              f"TS {_num(mm['total'])}")


def _num(v) -> str:
    """A metric for the terminal: 4 decimals, or ``n/a`` when undefined (no case with a known group)."""
    return "n/a" if v is None or v != v else f"{v:.4f}"


def _shown(text) -> str:
    """Cohort-supplied text for the terminal: control and bidirectional-override characters
    (escape sequences, U+202E) become ``?``, so a group value cannot drive the terminal."""
    import unicodedata

    return "".join("?" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in str(text))


def _torchrun(args) -> int | None:
    """``--nproc N`` (N > 1): run this very command as N processes under torchrun, return its status."""
    from ..inference.distributed import launch_command, launched

    if args.nproc < 1:
        raise InputDataError(None, f"--nproc must be 1 or more, got {args.nproc}")
    if args.nproc == 1:
        return None
    if launched():
        raise InputDataError(None, "--nproc starts torchrun itself; under torchrun leave it out")
    import subprocess

    return subprocess.call(launch_command(args.nproc, args.argv))


def _cmd_train(args) -> int:
    from ..data.manifest import refuse_overwriting_inputs
    from ..data.readers import open_cohort
    from ..training import model_config_for, train_job

    if (status := _torchrun(args)) is not None:
        return status
    cohort = open_cohort(args.cohort, metadata=args.metadata, classes=parse_classes(args.classes))
    if args.synthetic:
        from ..training.synthesize import with_synthetic

        cohort = with_synthetic(cohort, args.synthetic)
    out = Path(args.out)
    for path in (out, out.with_name(out.stem + ".log.csv")):
        refuse_overwriting_inputs(path, cohort, also=[p for p in (args.metadata, _model_file(args.init)) if p])
    config = _train_config(args)
    if args.synthetic:
        _report_plan(cohort, config)
    model_config = None
    if not (args.resume or args.init):
        overrides = {"dropout": args.dropout}
        if args.features:
            overrides["features"] = parse_ints(args.features)
        if args.patch:
            overrides["patch_size"] = parse_ints(args.patch)
        model_config = model_config_for(cohort, network=args.network, **overrides)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    result = run_with_bar(train_job(cohort, model_config, config, out=args.out, resume=args.resume, init=args.init),
                          args.quiet or not main_rank)
    if not main_rank:
        return 0
    _report_training(result, config, args.out)
    return 0


def _report_plan(cohort, config) -> None:
    """Print how the synthetic cases enter training (equal scale: one epoch's cases per group)."""
    n = len(cohort.synthetic_ids)
    if config.fairness != "equal-scale":
        print(f"{n} synthetic cases join the training cases (use --fairness equal-scale to fill small groups "
              "with them instead)")
        return
    import numpy as np
    import pandas as pd

    from ..training import trainer

    objective, _, _ = trainer.objective_for(cohort, config)
    counts = objective.plan_counts(np.random.default_rng(0))
    made = pd.Series(objective.groups[objective.synthetic]).value_counts()
    print(f"equal scale: {objective.n_target} cases per group per epoch (real + synthetic + repeats of real ones)")
    for group, row in counts.iterrows():
        print(f"  {group}: {row['real']} real, {row['synthetic']} synthetic ({made.get(group, 0)} generated cases), "
              f"{row['repeat']} repeats")
    short = [g for g, row in counts.iterrows() if row["synthetic"] > made.get(g, 0)]
    if short:
        print(f"note: too few synthetic cases for {', '.join(map(str, short))}: each is drawn more than once per "
              "epoch; fairseg synthesize --per-group more to fill the groups with distinct cases")


def _model_file(ref: str | None) -> Path | None:
    """The checkpoint file a ``--init`` / ``--from`` reference names (a bundled name resolved),
    so that ``--out`` cannot overwrite it; ``None`` when there is none (or it is missing: the job
    says so)."""
    if not ref:
        return None
    from ..models.zoo import resolve_checkpoint

    try:
        return resolve_checkpoint(ref)
    except InputDataError:
        return None


def _train_config(args, **fixed):
    """The :class:`TrainConfig` of ``train`` / ``adapt`` options (those a subcommand lacks keep defaults)."""
    from ..training import TrainConfig

    fields = ("epochs", "batch_size", "lr", "loss", "fairness", "group_attribute", "alpha", "min_support", "dro_eta",
              "equal_scale_target", "pseudo_label_split", "pseudo_weight", "chi", "val_fraction", "seed", "device",
              "workers", "spacing", "fg_crop_prob", "tau")
    option = {"fg_crop_prob": "fg_prob"}  # the config field → its option's name where they differ
    kw = {f: getattr(args, option.get(f, f)) for f in fields if hasattr(args, option.get(f, f))}
    if getattr(args, "attributes", None) is not None:
        kw["attributes"] = parse_names(args.attributes)
    kw["amp"] = not args.no_amp
    return TrainConfig(**kw, **fixed)


def _report_training(result, config, out) -> None:
    last = result.log.iloc[-1] if len(result.log) else {}
    groups = {k[9:-1]: v for k, v in dict(last).items() if k.startswith("val_dice[")}
    processes = f", {result.meta['world_size']} processes" if result.meta.get("world_size", 1) > 1 else ""
    if result.meta.get("n_val"):
        validation = (f"last val Dice {last.get('val_dice', float('nan')):.4f}"
                      + "".join(f"  {g} {v:.4f}" for g, v in groups.items()))
    else:
        validation = "no validation cases (--val-fraction 0, a cohort without a val split, or under 4 training cases)"
    epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    print(f"trained {result.config.network} ({result.meta['device']}{processes}) up to {epochs}; "
          + validation)
    print(f"checkpoint: {out}\nlog: {Path(out).with_name(Path(out).stem + '.log.csv')}")


def _cmd_adapt(args) -> int:
    from ..data.manifest import refuse_overwriting_inputs
    from ..data.readers import open_cohort
    from ..models.uuds import UUDSOptions
    from ..training.adapt import adapt_job

    classes = parse_classes(args.classes)
    source = open_cohort(args.source, metadata=args.metadata, classes=classes)
    target = open_cohort(args.target, metadata=args.target_metadata, classes=classes)
    out = Path(args.out)
    also = [p for p in (args.metadata, args.target_metadata, _model_file(args.init)) if p]
    for path in (out, out.with_name(out.stem + ".log.csv")):
        refuse_overwriting_inputs(path, source, also=also)
        refuse_overwriting_inputs(path, target)
    weights = parse_floats(args.weights, 4, "--weights")
    config = _train_config(args, uuds_weights=weights, uncertainty_mask=not args.no_uncertainty,
                           uuds_translation=args.translation, uuds_polarity=args.polarity)
    options = UUDSOptions(width=args.width, context=args.context, domain_prompt=not args.no_domain_prompt,
                          segmentation_prompt=not args.no_segmentation_prompt)
    model_config = None
    if args.patch and (args.init or args.resume):
        raise InputDataError(None, "--patch sizes a new network; with --from or --resume the model keeps its own "
                             "(train the source model with --patch instead)")
    if args.patch:
        from ..training import model_config_for

        model_config = model_config_for(source, patch_size=parse_ints(args.patch))
    result = run_with_bar(adapt_job(source, target, config, options=options, model_config=model_config,
                                    out=args.out, init=args.init, resume=args.resume), args.quiet)
    _report_training(result, config, args.out)
    last = result.log.iloc[-1] if len(result.log) else {}
    if "contrast_loss" in result.log and not result.log["contrast_loss"].any():
        remedy = ("adapt a source model trained on patches (fairseg train --patch …) with --fg-prob below 1"
                  if args.init or args.resume else "use --patch with --fg-prob below 1")
        print("note: the in-batch contrast (L_BSCL) was 0 in every epoch: each batch held only images with the "
              f"object (or only without). For it to act, {remedy}, or use larger batches")
    start = result.meta.get("uuds_start") or {}
    gains, dm = start.get("gain", []), start.get("distribution_loss", {})
    flipped = [c for c, g in enumerate(gains) if g < 0]
    if gains:
        figures = "; ".join(f"channel {c}: L_DM {dm['as_is'][c]:.3f} as is, {dm['inverted'][c]:.3f} inverted"
                            for c in range(len(gains))) if dm.get("as_is") else ""
        if flipped:
            how = ("as --polarity inverted asked" if dm.get("polarity") == "inverted"
                   else "its inverted intensities match the source's far better; a new run with --polarity as-is keeps it")
            print(f"target contrast inverted before translation (channel{'s' if len(flipped) > 1 else ''} "
                  f"{', '.join(map(str, flipped))}): {how} ({figures})")
        else:
            how = "as --polarity as-is asked" if dm.get("polarity") == "as-is" else "inverting would not match better"
            print(f"target contrast kept as is: {how} ({figures})")
    print(f"adapted {source.name} -> {target.name}: last epoch pseudo-label loss {last.get('pseudo_loss', float('nan')):.4f}, "
          f"identity {last.get('identity_loss', float('nan')):.4f} (validation is on the source: the target has no labels)")
    return 0


def _cmd_predict(args) -> int:
    import dataclasses

    from ..data.readers import open_cohort
    from ..inference import InferenceConfig, predict_cases_job
    from ..inference.distributed import session

    if (status := _torchrun(args)) is not None:
        return status
    cohort = open_cohort(args.cohort, metadata=args.metadata, classes=parse_classes(args.classes))
    settings = InferenceConfig(device=args.device, amp=not args.no_amp, batch_size=args.batch_size,
                               uncertainty=args.uncertainty, passes=args.passes, roi_radius=args.roi_radius,
                               empty=args.empty, seed=args.seed)
    ids = list(parse_names(args.cases)) or None
    if args.split:
        ids = [c for c in (ids or cohort.case_ids) if cohort.row(c)["split"] == args.split]
        if not ids:
            raise InputDataError(cohort.source, f"no cases in split {args.split!r}")
    # the job the Model & inference dock runs: load and check the checkpoint, then predict; under
    # torchrun each process predicts its share of the cases on its own device
    with session(args.device) as dist:
        if dist.active:
            settings = dataclasses.replace(settings, device=str(dist.device))
        result = run_with_bar(predict_cases_job(cohort, args.model, ids, settings=settings, out_dir=args.out,
                                                write_maps=not args.no_maps, dist=dist), args.quiet or not dist.is_main)
    if not dist.is_main:
        return 0
    processes = f" ({dist.world_size} processes)" if dist.active else ""
    n = len(result.scores)
    print(f"predicted {n} case{'' if n == 1 else 's'} on {result.device}{processes} in {result.seconds:.1f} s "
          f"-> {args.out}")
    for line in result.warning_summary:  # inputs unlike the model's training data, once per kind
        print(f"fairseg: warning: {line}", file=sys.stderr)
    if "masked_entropy" in result.scores:
        top = result.scores.sort_values("masked_entropy", ascending=False).head(5)
        print("most uncertain (masked scaled entropy): "
              + ", ".join(f"{r.case_id} {r.masked_entropy:.4f}" for r in top.itertuples()))
    return 0


def _sample_dir(kind: str, seed: int, cases: int | None, bias: str) -> Path:
    from ..data.synthetic import cache_dir

    return cache_dir() / f"{kind}-{bias if kind == 'brain' else 'fairseg'}-seed{seed}-n{cases or 'default'}"


def _make_sample(kind, out, *, cases, seed, bias, quiet, shape=None, spacing=None, field="caudate", modality="t1"):
    from ..data.synthetic import brain_cohort_job, breast_cohort_job, fundus_cohort_job

    kwargs = {"seed": seed}
    if cases is not None:
        kwargs["n_cases"] = cases
    if kind == "brain":
        return run_with_bar(brain_cohort_job(out, bias=bias, field=field, modality=modality, **kwargs), quiet)
    if kind == "breast":
        kwargs.update({k: v for k, v in (("shape", shape), ("spacing", spacing)) if v})
        return run_with_bar(breast_cohort_job(out, **kwargs), quiet)
    return run_with_bar(fundus_cohort_job(out, **kwargs), quiet)


def _cmd_synthesize(args) -> int:
    from ..data.arrays import load_case
    from ..data.points import cup_inside_disc, cup_to_disc_ratio
    from ..data.readers import open_cohort
    from ..training.image_generator import ImageGeneratorConfig
    from ..training.mask_generator import MaskGeneratorConfig
    from ..training.synthesize import synthesize_job

    cohort = open_cohort(args.cohort, metadata=args.metadata)
    masks = MaskGeneratorConfig(steps=args.mask_steps)
    images = ImageGeneratorConfig(steps=args.image_steps, size=args.size, width=args.width)
    synthetic = run_with_bar(synthesize_job(cohort, args.attribute, args.per_group, args.out, masks=masks,
                                            images=images, seed=args.seed), args.quiet)
    print(f"{len(synthetic)} synthetic cases in {Path(args.out) / 'manifest.csv'}; vertical cup-to-disc ratio "
          "(mean ± std), synthetic against real:")
    inside_all = 0
    for name, rows in synthetic.cases.groupby(args.attribute, sort=True):
        made = [load_case(synthetic, c).label for c in rows["case_id"]]
        cases = cohort.cases
        real_ids = cases.loc[(cases[args.attribute].astype("string") == name) & cases["label"].notna()
                             & (cases["split"].astype("string").fillna("") != "test"), "case_id"]
        real = [cup_to_disc_ratio(load_case(cohort, c).label) for c in real_ids]
        cdr = [cup_to_disc_ratio(m) for m in made]
        inside = sum(cup_inside_disc(m) for m in made)
        print(f"  {name}: {_mean_std(cdr)} (real {_mean_std(real)}, {len(real)} training cases); cup inside "
              f"disc in {inside}/{len(made)}")
        inside_all += inside
    if inside_all < len(synthetic) / 2:
        print(f"warning: only {inside_all} of {len(synthetic)} generated cups lie inside their disc: the generators "
              "look undertrained (raise --mask-steps / --image-steps) — look at the cases before training on them")
    return 0


def _mean_std(values) -> str:
    import numpy as np

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) else "n/a"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _cmd_sample(args) -> int:
    if (args.shape or args.spacing) and args.kind != "breast":
        raise ValueError("--shape and --spacing are options of the breast sample")
    if (args.field != "caudate" or args.modality != "t1") and args.kind != "brain":
        raise ValueError("--field and --modality are options of the brain sample")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputDataError(out, "exists and is not an empty folder: a sample is written into a new folder, "
                             "so that it never mixes with (or replaces the manifest of) another cohort")
    cohort = _make_sample(args.kind, args.out, cases=args.cases, seed=args.seed, bias=args.bias, quiet=args.quiet,
                          shape=args.shape, spacing=args.spacing, field=args.field, modality=args.modality)
    where = Path(args.out) / "manifest.csv" if args.kind == "brain" else Path(args.out)
    print(f"wrote {len(cohort)} {args.kind} cases; open with: fairseg audit {where} ...")
    return 0


def _cmd_demo(args) -> int:
    from ..data.readers import open_cohort
    from ..report.audit import AuditConfig, audit_job, write_audit

    out = Path(args.out)
    shipped = Path(__file__).resolve().parents[2] / "sample_data" / args.kind
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
    test_ids = cohort.cases.loc[cohort.cases["split"] == "test", "case_id"].tolist()
    if args.predictor == "atlas":
        from ..baseline import atlas_predictions_job

        print("predictions: atlas baseline (majority label of the training cases) -> " + str(preds))
        run_with_bar(atlas_predictions_job(cohort, preds), args.quiet)
    else:
        from ..inference import InferenceConfig, Predictor, predict_pool_job
        from ..models.checkpoint import load_checkpoint
        from ..models.zoo import bundled_checkpoint

        ckpt = load_checkpoint(bundled_checkpoint(args.kind))
        predictor = Predictor.from_checkpoint(ckpt, InferenceConfig(uncertainty="entropy"))
        print(f"predictions: bundled {ckpt.config.network} checkpoint on {predictor.device_name} -> {preds}")
        result = run_with_bar(predict_pool_job(cohort, predictor, test_ids, out_dir=preds, checkpoint=ckpt), args.quiet)
        top = result.scores.sort_values("masked_entropy", ascending=False).head(3)
        print("most uncertain test cases (masked scaled entropy): "
              + ", ".join(f"{r.case_id} {r.masked_entropy:.4f}" for r in top.itertuples()))
    attrs = ("group", "sex", "age") if args.kind == "brain" else ("race", "gender", "age", "ethnicity", "language")
    audit = run_with_bar(audit_job(cohort, preds, AuditConfig(attributes=attrs, split="test", min_group_size=5)), args.quiet)
    paths = write_audit(audit, out / "audit")
    _print_headline(audit)
    print(f"report: {paths['report']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairseg", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("audit", help="fairness audit of predictions against a cohort's labels")
    a.add_argument("cohort", help="manifest CSV or dataset folder (NIfTI, images, FairSeg npz, MAMA-MIA)")
    a.add_argument("--predictions", required=True, help="folder of predictions named <case_id> in the cohort's format")
    a.add_argument("--attributes", default="", help="comma-separated attributes (default: all)")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--metadata", help="metadata table (CSV/XLSX) joined by case id")
    a.add_argument("--classes", help="what the mask values mean when the dataset kind's default does not fit, e.g. \"rim=1, cup=2\" or \"disc=1,2; cup=2\"")
    a.add_argument("--split", help="audit only this split (train/val/test/pool)")
    a.add_argument("--hd", choices=HD_MODES, default=AUDIT["hd_mode"],
                   help=f"HD95 units, or none (default {AUDIT['hd_mode']})")
    a.add_argument("--min-support", type=float, default=AUDIT["min_support"], help="subgroup discovery minimum support")
    a.add_argument("--min-group-size", type=int, default=AUDIT["min_group_size"], help="flag groups smaller than this")
    a.add_argument("--n-boot", type=int, default=AUDIT["n_boot"], help="bootstrap resamples for CIs")
    a.add_argument("--std-ddof", type=int, default=AUDIT["std_ddof"], help="ddof of the ESSP-std variant")
    a.add_argument("--empty-score", type=float, default=AUDIT["empty_score"], help="Dice/IoU when both masks are empty")
    a.add_argument("--mamamia", action="store_true", help="also compute MAMA-MIA PS/FS/TS")
    a.set_defaults(func=_cmd_audit)

    # no abbreviated options: --nproc must be seen (and taken out) exactly when torchrun is started
    t = sub.add_parser("train", help="train or fine-tune a segmentation network", allow_abbrev=False)
    t.add_argument("cohort", help="manifest CSV or dataset folder")
    t.add_argument("--out", required=True, help="checkpoint to write (log: <stem>.log.csv beside it)")
    t.add_argument("--metadata", help="metadata table (CSV/XLSX) joined by case id")
    t.add_argument("--classes", help="what the mask values mean when the dataset kind's default does not fit, e.g. \"rim=1, cup=2\" or \"disc=1,2; cup=2\"")
    t.add_argument("--network", choices=NETWORKS, default=MODEL["network"],
                   help="light_unet (seed 001, 3D; 2D cohorts get unet), unet, segresnet, swinunetr")
    t.add_argument("--features", help="feature widths per level, e.g. 8,16")
    t.add_argument("--dropout", type=float, default=MODEL["dropout"], help="dropout (> 0 enables MC-dropout uncertainty)")
    t.add_argument("--patch", help="training crop / sliding window size, e.g. 96,96,64 (default whole images)")
    t.add_argument("--spacing", type=_floats,
                   help="3D: resample every case to this voxel size in mm, e.g. 1,1,1 (default: the training "
                        "cases' median spacing); stored in the checkpoint, so prediction does the same")
    t.add_argument("--fg-prob", type=float, default=TRAIN["fg_crop_prob"],
                   help="patch training: share of crops centred on a labelled voxel (the rest anywhere)")
    t.add_argument("--fairness", choices=OBJECTIVES, default=TRAIN["fairness"])
    t.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    t.add_argument("--batch-size", type=int, default=TRAIN["batch_size"])
    t.add_argument("--lr", type=float, default=TRAIN["lr"])
    t.add_argument("--loss", choices=TRAIN_LOSSES, default=TRAIN["loss"])
    t.add_argument("--group-attribute", help="groups for per-group validation Dice, GroupDRO and equal-scale")
    t.add_argument("--attributes", help="comma-separated attributes for divergence subgroups (default all)")
    t.add_argument("--alpha", type=float, default=TRAIN["alpha"], help="divergence: weight of the plain loss term")
    t.add_argument("--min-support", type=float, default=TRAIN["min_support"], help="divergence: DivExplorer minimum support")
    t.add_argument("--dro-eta", type=float, default=TRAIN["dro_eta"], help="GroupDRO step size")
    t.add_argument("--equal-scale-target", type=int, help="equal-scale: cases per group per epoch")
    t.add_argument("--synthetic", metavar="DIR",
                   help="add the synthetic cases of DIR (written by fairseg synthesize from this cohort) as training "
                        "cases; with --fairness equal-scale they fill the small groups")
    t.add_argument("--pseudo-label-split", help="unlabelled target-domain split trained with pseudo-labels")
    t.add_argument("--pseudo-weight", type=float, default=TRAIN["pseudo_weight"])
    t.add_argument("--chi", type=float, default=TRAIN["chi"], help="pseudo-label uncertainty threshold")
    t.add_argument("--val-fraction", type=float, default=TRAIN["val_fraction"])
    t.add_argument("--seed", type=int, default=TRAIN["seed"])
    t.add_argument("--device", default=TRAIN["device"], help=DEVICE_HELP)
    t.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    t.add_argument("--workers", type=int, default=TRAIN["workers"], help="data-loading worker processes per training process")
    t.add_argument("--nproc", type=int, default=1,
                   help="training processes on this machine (one per GPU): relaunches itself with torchrun")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", help="continue an interrupted run from its checkpoint")
    g.add_argument("--init", help="fine-tune from this checkpoint (or 'brain' / 'fundus')")
    t.set_defaults(func=_cmd_train)

    ad = sub.add_parser("adapt", allow_abbrev=False,
                        help="adapt a model from a labelled source cohort to an unlabelled target cohort (seed 002, UUDS)")
    ad.add_argument("source", help="labelled source cohort: manifest CSV or dataset folder")
    ad.add_argument("target", help="unlabelled target cohort (its train split, or every case, is used; labels are not read)")
    ad.add_argument("--out", required=True, help="adapted checkpoint to write (log: <stem>.log.csv beside it)")
    ad.add_argument("--metadata", help="source metadata table (CSV/XLSX) joined by case id")
    ad.add_argument("--target-metadata", help="target metadata table")
    ad.add_argument("--classes", help="what the mask values mean, as for train")
    ad.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    ad.add_argument("--batch-size", type=int, default=TRAIN["batch_size"])
    ad.add_argument("--lr", type=float, default=TRAIN["lr"])
    ad.add_argument("--loss", choices=TRAIN_LOSSES, default=TRAIN["loss"])
    ad.add_argument("--fairness", choices=OBJECTIVES, default=TRAIN["fairness"],
                    help="fairness objective on the supervised source term")
    ad.add_argument("--group-attribute", help="groups for per-group validation Dice")
    ad.add_argument("--weights", default="1,1,1,1",
                    help="seed 002's alpha (domain distillation), beta (in-batch contrast), gamma (segmentation, "
                         "pseudo-label and supervised), lambda (identity); default 1,1,1,1 as the paper")
    ad.add_argument("--translation", choices=UUDS_TRANSLATIONS, default="match",
                    help="what moves translations to the source domain: 'match' (default) matches their intensity "
                         "distribution to the source's; 'prompt' is the paper's Eq. 2 (the learned domain prompt), "
                         "which left the shift in place in our measurements")
    ad.add_argument("--polarity", choices=UUDS_POLARITIES, default="auto",
                    help="the target's contrast before translation: 'auto' inverts a channel when its inverted "
                         "intensities match the source's far better (T1 vs T2); 'as-is' or 'inverted' decide")
    ad.add_argument("--patch", help="a new network (no --from): training crop size, e.g. 32,32,24")
    ad.add_argument("--fg-prob", type=float, default=TRAIN["fg_crop_prob"],
                    help="patch models: share of source crops centred on a labelled voxel (below 1, batches mix "
                         "crops with and without the object, which the in-batch contrast needs)")
    ad.add_argument("--chi", type=float, default=TRAIN["chi"], help="pseudo-label uncertainty threshold")
    ad.add_argument("--tau", type=float, default=0.07, help="temperature of the two contrasts")
    ad.add_argument("--width", type=int, default=16, help="channels of the translator and prompts")
    ad.add_argument("--context", type=int, default=4, help="context vectors of the segmentation prompt")
    ad.add_argument("--no-domain-prompt", action="store_true", help="ablation: no domain prompt (no L_DD)")
    ad.add_argument("--no-segmentation-prompt", action="store_true", help="ablation: no segmentation prompt (no L_BSCL)")
    ad.add_argument("--no-uncertainty", action="store_true", help="ablation: pseudo-labels on every voxel")
    ad.add_argument("--val-fraction", type=float, default=TRAIN["val_fraction"])
    ad.add_argument("--seed", type=int, default=TRAIN["seed"])
    ad.add_argument("--device", default=TRAIN["device"], help=DEVICE_HELP)
    ad.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    ad.add_argument("--workers", type=int, default=TRAIN["workers"], help="data-loading worker processes")
    g = ad.add_mutually_exclusive_group()
    g.add_argument("--from", dest="init", help="the source model to adapt (checkpoint, or 'brain' / 'fundus'); "
                   "default: a new network trained from scratch with the translator")
    g.add_argument("--resume", help="continue an interrupted adaptation from its checkpoint")
    ad.set_defaults(func=_cmd_adapt)

    r = sub.add_parser("predict", help="predictions and uncertainty maps with a trained network", allow_abbrev=False)
    r.add_argument("cohort", help="manifest CSV or dataset folder")
    r.add_argument("--model", required=True,
                   help="checkpoint file, or 'brain' / 'fundus': the bundled DEMO models, trained on synthetic "
                        "data only (not for real scans)")
    r.add_argument("--out", required=True, help="output folder: <case_id> predictions, maps/, scores.csv")
    r.add_argument("--metadata", help="metadata table (CSV/XLSX) joined by case id")
    r.add_argument("--classes", help="what the mask values mean when the dataset kind's default does not fit, e.g. \"rim=1, cup=2\" or \"disc=1,2; cup=2\"")
    r.add_argument("--uncertainty", choices=UNCERTAINTY, default=INFERENCE["uncertainty"])
    r.add_argument("--passes", type=int, default=INFERENCE["passes"], help="MC-dropout passes")
    r.add_argument("--roi-radius", type=int, default=INFERENCE["roi_radius"],
                   help="ROI dilation for the masked entropy (voxels)")
    r.add_argument("--empty", choices=EMPTY_RULES, default=INFERENCE["empty"],
                   help="masked entropy of an empty prediction")
    r.add_argument("--split", help="only this split")
    r.add_argument("--cases", help="comma-separated case ids")
    r.add_argument("--batch-size", type=int, default=INFERENCE["batch_size"])
    r.add_argument("--device", default=INFERENCE["device"], help=DEVICE_HELP)
    r.add_argument("--no-amp", action="store_true")
    r.add_argument("--no-maps", action="store_true", help="write predictions and scores only")
    r.add_argument("--seed", type=int, default=INFERENCE["seed"], help="seed of the MC-dropout masks")
    r.add_argument("--nproc", type=int, default=1,
                   help="prediction processes on this machine (one per GPU), each taking a share of the cases: "
                        "relaunches itself with torchrun")
    r.set_defaults(func=_cmd_predict)

    s = sub.add_parser("sample", help="write a synthetic sample cohort")
    s.add_argument("kind", choices=["brain", "fundus", "breast"])
    s.add_argument("--out", required=True)
    s.add_argument("--cases", type=int, help="number of cases (default 24 brain, 60 fundus, 8 breast)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bias", choices=["strong", "weak"], default="strong", help="brain Group 1 deformation")
    s.add_argument("--field", choices=BRAIN_FIELDS, default="caudate",
                   help="brain: 64×64×48 voxels around the caudate, or the whole head (132×156×127 at 1.5 mm)")
    s.add_argument("--modality", choices=BRAIN_MODALITIES, default="t1",
                   help="brain: T1 (the template), or T2-like contrast from its tissue maps on other subjects' "
                        "deformations (a target domain for cross-modality adaptation)")
    s.add_argument("--shape", type=parse_ints, help="breast: voxels X,Y,Z of the RAS grid (default 448,448,120)")
    s.add_argument("--spacing", type=_floats, help="breast: voxel size in mm along X,Y,Z (default 0.7,0.7,1.5)")
    s.set_defaults(func=_cmd_sample)

    y = sub.add_parser("synthesize", allow_abbrev=False,
                       help="generate mask-and-image pairs per group of a fundus cohort (seed 003, FairDiff)")
    y.add_argument("cohort", help="manifest CSV or FairSeg-style npz folder with disc/cup masks")
    y.add_argument("--attribute", required=True, help="categorical attribute whose groups get cases (e.g. race)")
    y.add_argument("--per-group", type=int, required=True, help="cases to write per group")
    y.add_argument("--out", required=True, help="output folder (run again with the same settings to resume)")
    y.add_argument("--metadata", help="metadata table (CSV/XLSX) joined by case id")
    y.add_argument("--mask-steps", type=int, default=MASK_GENERATOR["steps"], help="mask generator training steps")
    y.add_argument("--image-steps", type=int, default=IMAGE_GENERATOR["steps"], help="image generator training steps")
    y.add_argument("--size", type=int, default=IMAGE_GENERATOR["size"],
                   help="side in pixels the image generator works at (a multiple of 4; seed 003: 512)")
    y.add_argument("--width", type=int, default=IMAGE_GENERATOR["width"],
                   help="image generator UNet features (a multiple of 8)")
    y.add_argument("--seed", type=int, default=0)
    y.set_defaults(func=_cmd_synthesize)

    d = sub.add_parser("demo", help="predict a sample cohort's test split with the bundled network and audit it")
    d.add_argument("--out", default="demo_output")
    d.add_argument("--kind", choices=["brain", "fundus"], default="brain")
    d.add_argument("--predictor", choices=["network", "atlas"], default="network",
                   help="the bundled network (default) or the model-free atlas baseline")
    d.set_defaults(func=_cmd_demo)

    from .active import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` relaunches itself with them
    try:
        return args.func(args)
    except Cancelled as exc:  # before FairSegError, its base class
        print(f"fairseg: {exc}", file=sys.stderr)
        return 130
    except (FairSegError, ValueError, RuntimeError) as exc:
        print(f"fairseg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an --out that is a file, a folder where a file goes, no permission, …
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fairseg: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = {"synthesize": "run the same command again to go on from where it stopped",
               "train": "a training run keeps its last finished epoch: continue it with --resume",
               "adapt": "an adaptation keeps its last finished epoch: continue it with --resume"}
        hint = how.get(getattr(args, "command", None), "")
        print(f"\nfairseg: interrupted; files already written are complete{f' ({hint})' if hint else ''}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
