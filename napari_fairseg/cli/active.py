"""Active-learning subcommands: ``project`` (init / status / import / export), ``suggest``,
``label`` and ``simulate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.classes import parse_classes
from ..errors import InputDataError
from ..options import LABEL_SOURCES, PRESETS, ROUND, SIMULATION, STRATEGIES
from .common import DEVICE_HELP, parse_ints, parse_names, run_with_bar


# --------------------------------------------------------------------------- project
def _cmd_project(args) -> int:
    from ..active import Project
    from ..active.project import create_project
    from ..data.readers import open_cohort

    if args.action == "init":
        if not args.cohort:
            raise InputDataError(None, "project init needs the cohort: fairseg project init PROJECT --cohort "
                                 "MANIFEST_OR_FOLDER")
        with create_project(args.project, args.cohort, import_labels=args.import_labels, metadata=args.metadata,
                            classes=parse_classes(args.classes), author=args.author) as p:
            st = p.status()
            print(f"created project {args.project} on {p.cohort.name}: {len(st)} cases, "
                  f"{int(st['labelled'].sum())} labelled")
        return 0
    with Project.open(args.project) as p:
        if args.action == "status":
            return _print_status(p)
        elif args.action == "import":
            if not args.cohort:
                raise InputDataError(None, "project import needs --cohort MANIFEST (labels to import)")
            cohort = open_cohort(args.cohort, metadata=args.metadata, classes=parse_classes(args.classes))
            done = p.import_labels(cohort, author=args.author, overwrite=args.overwrite)
            print(f"imported {len(done)} label(s) into {args.project}")
        else:  # export
            if not args.out:
                raise InputDataError(None, "project export needs --out FOLDER")
            paths = p.export(args.out)
            print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


def _print_status(p) -> int:
    """Print the project's state; 1 when a recorded annotation version fails its checksum."""
    damaged = p.verify()
    st = p.status(damaged=damaged)
    print(f"project {p.root} on cohort {p.cohort.name} ({p.cohort.source})")
    for split, part in st.groupby("split"):
        print(f"  {split:<6} {len(part):4d} cases, {int(part['labelled'].sum()):4d} labelled")
    for r in damaged.itertuples(index=False):
        print(f"  TAMPERED {r.case_id} version {r.version}: {r.problem} ({r.path})")
    _print_rounds(p)
    if len(damaged):
        print(f"fairseg: {len(damaged)} annotation version(s) are missing or differ from their recorded "
              "checksum (listed above)", file=sys.stderr)
        return 1
    return 0


def _print_rounds(p) -> None:
    rounds = p.rounds()
    if rounds.empty:
        print("  no rounds yet: fairseg suggest " + str(p.root))
        return
    print(f"  {len(rounds)} round(s):")
    for r in rounds.itertuples(index=False):
        r = r._asdict()
        print(f"    #{r['id']:<3} {str(r.get('strategy') or '-'):<10} labelled {r.get('n_labelled')}  "
              f"Dice {r.get('dice', float('nan')):.4f}  Δ {r.get('delta', float('nan')):.4f}  "
              f"ESSP {r.get('essp', float('nan')):.4f}")
    sugg = p.suggestions()
    if len(sugg):
        todo = sugg[~sugg["labelled"]]["case_id"].tolist()
        print(f"  latest suggestions: {', '.join(sugg['case_id'])}" + (f"  (still to label: {', '.join(todo)})"
                                                                         if todo else "  (all labelled)"))


# --------------------------------------------------------------------------- suggest / label
def _round_config(args, **extra):
    from ..active import RoundConfig

    return RoundConfig(strategy=args.strategy, batch=args.batch, epochs=args.epochs, first_epochs=args.first_epochs,
                       lr=args.lr, warm_start=not args.from_scratch, pool_split=args.pool_split,
                       eval_split=args.eval_split, group_attribute=args.group_attribute, roi_radius=args.roi_radius,
                       mc_passes=args.passes, encoder=args.encoder, seed=args.seed, device=args.device,
                       amp=not args.no_amp, **extra)


def _cmd_suggest(args) -> int:
    from ..active import Project, load_encoder, round_job

    if args.encoder != "encoder":
        load_encoder(args.encoder)  # refuse a file that could run code before any work
    with Project.open(args.project) as p:
        result = run_with_bar(round_job(p, _round_config(args), train=True if args.retrain else None,
                                        model=args.model), args.quiet)
    m = result.metrics
    print(f"round {result.round_id}: {'trained on' if m['trained'] else 'model reused for'} {m['n_labelled']} "
          f"labelled case(s); held-out ({m['n_eval']}) Dice {m['dice']:.4f}  Δ {m['delta']:.4f}  "
          f"ESSP {m['essp']:.4f}")
    weights = {k[7:-1]: v for k, v in m.items() if k.startswith("weight[")}
    if weights:
        print("WLE group weights: " + ", ".join(f"{g} {w:.3f}" for g, w in weights.items()))
    print(f"suggested ({args.strategy}, batch {args.batch}):")
    for rank, r in enumerate(result.suggestions.itertuples(index=False), start=1):
        print(f"  {rank:2d}. {r.case_id:<20} score {r.score:.4f}  group {r.group}  weight {r.group_weight:.3f}")
    print(f"label them with: fairseg label {args.project} CASE --mask FILE")
    return 0


def _cmd_label(args) -> int:
    from ..active import Project
    from ..data.arrays import label_ref, load_image, load_label_file
    from ..data.manifest import KEY_SEP

    with Project.open(args.project) as p:
        if args.case not in set(p.cohort.case_ids):
            raise InputDataError(args.project, f"case {args.case!r} is not in this project")
        mask = Path(args.mask)
        if not mask.is_file():
            raise InputDataError(mask, "mask file not found")
        ref = str(mask) if KEY_SEP in str(mask) else label_ref(p.cohort, mask, args.case)  # a key given wins
        label = load_label_file(p.cohort, ref, expect=load_image(p.cohort, args.case))
        version = p.save_annotation(args.case, label, author=args.author, source=args.source)
    print(f"saved {args.case} version {version} (author {args.author}, source {args.source})")
    return 0


# --------------------------------------------------------------------------- simulate
def _preset_cohort(preset: str, bias: str, quiet: bool):
    """The preset's brain cohort, generated once into the sample cache."""
    from ..data.readers import open_cohort
    from ..data.synthetic import brain_cohort_job, cache_dir

    spec = PRESETS[preset]["cohort"]
    shape = "x".join(map(str, spec["shape"]))
    where = cache_dir() / f"simulate-{preset}-{bias}-seed0-n{spec['n_cases']}-{shape}"
    if not (where / "manifest.csv").is_file():
        print(f"cohort: generating the {preset} preset's brain cohort ({spec['n_cases']} cases of {shape}, "
              f"{bias} bias) in {where}")
        run_with_bar(brain_cohort_job(where, bias=bias, seed=0, **spec), quiet)
    else:
        print(f"cohort: cached {where}")
    return open_cohort(where / "manifest.csv")


def _cmd_simulate(args) -> int:
    import dataclasses

    from ..active import RoundConfig
    from ..active.simulate import SimulationConfig, delta_reduction, simulate_job, summarise
    from ..data.readers import open_cohort

    preset = PRESETS[args.preset] if args.preset else {}
    if args.cohort:
        cohort = open_cohort(args.cohort, metadata=args.metadata, classes=parse_classes(args.classes))
    elif args.preset:
        cohort = _preset_cohort(args.preset, args.bias, args.quiet)
    else:
        raise InputDataError(None, "give a cohort or a preset (--preset quick)")
    rc = RoundConfig(**preset.get("round", {}))
    overrides = {k: v for k, v in {"batch": args.batch, "epochs": args.epochs, "first_epochs": args.first_epochs,
                                   "lr": args.lr, "device": args.device, "group_attribute": args.group_attribute,
                                   "pool_split": args.pool_split, "eval_split": args.eval_split}.items()
                 if v is not None}
    rc = dataclasses.replace(rc, **overrides)
    config = SimulationConfig(strategies=parse_names(args.strategies) or preset.get("strategies", ("random", "wle")),
                              seeds=parse_ints(args.seeds) or preset.get("seeds", (0,)),
                              initial=parse_ints(args.initial), cycles=args.cycles, round=rc)
    table = run_with_bar(simulate_job(cohort, config, args.out), args.quiet)
    s = summarise(table)
    final = int(table["cycle"].max())
    print(f"final budget ({int(table.loc[table['cycle'] == final, 'n_labelled'].iloc[0])} labels), "
          f"mean ± std over seeds {', '.join(map(str, config.seeds))}:")
    for strategy, r in s.iterrows():
        print(f"  {strategy:<10} Dice {r['dice_mean']:.4f} ± {r['dice_std']:.4f}  Δ {r['delta_mean']:.4f} ± "
              f"{r['delta_std']:.4f}  ESSP {r['essp_mean']:.4f} ± {r['essp_std']:.4f}")
    red = delta_reduction(table)
    if red == red:
        print(f"WLE lowers Δ by {100 * red:.0f}% against global entropy at the final budget (paper: ~75% strong, "
              "~86% weak bias)")
    print(f"results: {Path(args.out) / 'results.csv'}\nfigure: {Path(args.out) / 'learning_curves.png'}")
    return 0


# --------------------------------------------------------------------------- parsers
def _round_options(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--batch", type=int, default=d(ROUND["batch"]),
                   help=f"cases to suggest per round (default {ROUND['batch']})")
    p.add_argument("--epochs", type=int, default=d(ROUND["epochs"]),
                   help=f"fine-tuning epochs per round (default {ROUND['epochs']})")
    p.add_argument("--first-epochs", type=int, default=d(ROUND["first_epochs"]),
                   help=f"epochs when training from scratch (first round; default {ROUND['first_epochs']})")
    p.add_argument("--lr", type=float, default=d(ROUND["lr"]))
    p.add_argument("--group-attribute", help="sensitive attribute (default: group, race, sex or gender)")
    p.add_argument("--pool-split", default=d(ROUND["pool_split"]), help="split holding the labelled set and the pool")
    p.add_argument("--eval-split", default=d(ROUND["eval_split"]), help="held-out split for Dice / Δ / ESSP")
    p.add_argument("--device", default=d(ROUND["device"]), help=DEVICE_HELP)


def add_parsers(sub) -> None:
    """Add the active-learning subcommands to the ``fairseg`` parser."""
    pr = sub.add_parser("project", help="create, inspect, import into or export a labelling project")
    pr.add_argument("action", choices=["init", "status", "import", "export"])
    pr.add_argument("project", help="project folder")
    pr.add_argument("--cohort", help="manifest or dataset folder (init: the cohort; import: labels to import)")
    pr.add_argument("--metadata", help="metadata table (CSV/XLSX) joined by case id")
    pr.add_argument("--classes", help="what the mask values mean when the dataset kind's default does not fit, e.g. \"rim=1, cup=2\" or \"disc=1,2; cup=2\"")
    pr.add_argument("--import-labels", action="store_true", help="init: the cohort's labels become version 1")
    pr.add_argument("--overwrite", action="store_true", help="import: add a version even to labelled cases")
    pr.add_argument("--author", default="import", help="author recorded for imported labels")
    pr.add_argument("--out", help="export: output folder")
    pr.set_defaults(func=_cmd_project)

    s = sub.add_parser("suggest", help="one active-learning round: fine-tune, evaluate, suggest cases to label")
    s.add_argument("project", help="project folder (fairseg project init)")
    s.add_argument("--strategy", choices=STRATEGIES, default=ROUND["strategy"])
    _round_options(s)
    s.add_argument("--model", help="use this model for the round (checkpoint, or 'brain' / 'fundus')")
    s.add_argument("--retrain", action="store_true", help="train even if the labelled set did not change")
    s.add_argument("--from-scratch", action="store_true", help="retrain from scratch instead of fine-tuning")
    s.add_argument("--roi-radius", type=int, default=ROUND["roi_radius"])
    s.add_argument("--passes", type=int, default=ROUND["mc_passes"], help="MC-dropout passes (epistemic)")
    s.add_argument("--encoder", default=ROUND["encoder"],
                   help="fair-attr/poly/ap embeddings: 'encoder' (the network's bottleneck) or a FairSeg "
                        "checkpoint (.pt) whose network's bottleneck is used; TorchScript / .pt2 are refused")
    s.add_argument("--seed", type=int, default=ROUND["seed"])
    s.add_argument("--no-amp", action="store_true")
    s.set_defaults(func=_cmd_suggest)

    la = sub.add_parser("label", help="save an annotation of a case as its next version")
    la.add_argument("project")
    la.add_argument("case", help="case id")
    la.add_argument("--mask", required=True, help="label file in the cohort's format (NIfTI, npz, PNG)")
    la.add_argument("--author", required=True, help="who annotated it")
    la.add_argument("--source", choices=LABEL_SOURCES, default="human",
                    help="human edit (default), accepted model pre-fill, or imported")
    la.set_defaults(func=_cmd_label)

    si = sub.add_parser("simulate", help="seed 001's fair active-learning experiment (ground truth as annotator)")
    si.add_argument("cohort", nargs="?", help="manifest (default: the preset's generated brain cohort)")
    si.add_argument("--preset", choices=tuple(PRESETS), help="quick: 2-core CPU, ~15 min; paper: GPU sizes")
    si.add_argument("--bias", choices=["strong", "weak"], default="strong", help="preset cohort's bias")
    si.add_argument("--out", required=True, help="results folder (rerun with the same folder to resume)")
    si.add_argument("--metadata")
    si.add_argument("--classes", help="what the mask values mean when the dataset kind's default does not fit, e.g. \"rim=1, cup=2\" or \"disc=1,2; cup=2\"")
    si.add_argument("--strategies", help=f"comma-separated, from {', '.join(STRATEGIES)}")
    si.add_argument("--seeds", help="comma-separated seeds (preset quick: 0,1,2)")
    si.add_argument("--initial", default=",".join(map(str, SIMULATION["initial"])), help="initial labels per group, sorted group order (5,5 8,2 2,8)")
    si.add_argument("--cycles", type=int, default=SIMULATION["cycles"])
    _round_options(si, defaults=False)
    si.set_defaults(func=_cmd_simulate)
