"""One source of choices and defaults: napari_fairseg.options, read by the registries, the
configurations and the ``fairseg`` CLI (the docks: tests/_napari/test_dock_options.py)."""

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest

from napari_fairseg import options
from napari_fairseg.cli import build_parser


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _subcommand(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _choices(command: str, dest: str) -> tuple:
    return tuple(next(a for a in _subcommand(command)._actions if a.dest == dest).choices)


def _cli_fields(config_cls, args: argparse.Namespace, converted: dict) -> dict:
    """The config fields the CLI sets, as the CLI hands them over: same-named arguments as
    parsed, the others through ``converted`` (field → function of the parsed arguments)."""
    given = vars(args)
    out = {f.name: given[f.name] for f in fields(config_cls) if f.name in given and f.name not in converted}
    return out | {name: to_field(args) for name, to_field in converted.items()}


def _defaults(config, names) -> dict:
    return {n: getattr(config, n) for n in names}


def test_importing_the_options_loads_neither_torch_nor_monai():
    code = ("import sys, napari_fairseg.options\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'numpy', 'qtpy'})\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_the_cli_parser_loads_neither_torch_nor_monai():
    code = ("import sys\nfrom napari_fairseg.cli import build_parser\nbuild_parser()\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai'})\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_registries_are_the_options_lists():
    from napari_fairseg.active import STRATEGIES
    from napari_fairseg.active.project import SOURCES
    from napari_fairseg.inference.device import DEVICES
    from napari_fairseg.inference.predict import UNCERTAINTY
    from napari_fairseg.inference.uncertainty import EMPTY_RULES
    from napari_fairseg.models.networks import HEADS, INTENSITY, NETWORKS
    from napari_fairseg.report.audit import HD_MODES
    from napari_fairseg.training import LOSSES, OBJECTIVES

    assert (NETWORKS, HEADS, INTENSITY, LOSSES, OBJECTIVES, STRATEGIES, UNCERTAINTY, EMPTY_RULES, DEVICES,
            HD_MODES, SOURCES) == (options.NETWORKS, options.HEADS, options.INTENSITY, options.LOSSES,
                                   options.OBJECTIVES, options.STRATEGIES, options.UNCERTAINTY,
                                   options.EMPTY_RULES, options.DEVICES, options.HD_MODES,
                                   options.LABEL_SOURCES)


def test_the_cli_offers_exactly_the_options_choices():
    assert _choices("train", "network") == options.NETWORKS
    assert _choices("train", "fairness") == options.OBJECTIVES
    assert _choices("train", "loss") == options.TRAIN_LOSSES
    assert _choices("predict", "uncertainty") == options.UNCERTAINTY
    assert _choices("predict", "empty") == options.EMPTY_RULES
    assert _choices("audit", "hd") == options.HD_MODES
    assert _choices("suggest", "strategy") == options.STRATEGIES
    assert _choices("label", "source") == options.LABEL_SOURCES
    assert _choices("simulate", "preset") == tuple(options.PRESETS)


def test_every_choice_the_cli_offers_is_one_the_configs_accept():
    from napari_fairseg.active import RoundConfig
    from napari_fairseg.inference import InferenceConfig
    from napari_fairseg.report.audit import AuditConfig
    from napari_fairseg.training import TrainConfig

    for loss in _choices("train", "loss"):
        TrainConfig(loss=loss)
    for fairness in _choices("train", "fairness"):
        TrainConfig(fairness=fairness)
    for method in _choices("predict", "uncertainty"):
        InferenceConfig(uncertainty=method)
    for empty in _choices("predict", "empty"):
        InferenceConfig(empty=empty)
    for mode in _choices("audit", "hd"):
        AuditConfig(hd_mode=mode)
    for strategy in _choices("suggest", "strategy"):
        RoundConfig(strategy=strategy)
    with pytest.raises(ValueError, match="fairness must be one of"):
        TrainConfig(fairness="fairest")


def test_fairseg_train_without_options_trains_with_the_configs_defaults():
    from napari_fairseg.cli.common import parse_names
    from napari_fairseg.models import ModelConfig
    from napari_fairseg.training import TrainConfig

    args = _parse("train", "cohort.csv", "--out", "model.pt")
    cli = _cli_fields(TrainConfig, args, {"amp": lambda a: not a.no_amp,
                                          "attributes": lambda a: parse_names(a.attributes)})
    assert cli == _defaults(TrainConfig(), cli)
    # every option with a default that is not None is compared, not only a few
    assert {"epochs", "batch_size", "lr", "loss", "fairness", "alpha", "min_support", "dro_eta", "pseudo_weight",
            "chi", "val_fraction", "seed", "device", "amp"} <= set(cli)
    assert (args.network, args.dropout) == (ModelConfig().network, ModelConfig().dropout)


def test_fairseg_predict_without_options_predicts_with_the_configs_defaults():
    from napari_fairseg.inference import InferenceConfig

    args = _parse("predict", "cohort.csv", "--model", "brain", "--out", "preds")
    cli = _cli_fields(InferenceConfig, args, {"amp": lambda a: not a.no_amp})
    assert cli == _defaults(InferenceConfig(), cli)
    assert {"device", "amp", "batch_size", "uncertainty", "passes", "roi_radius", "empty", "seed"} <= set(cli)


def test_fairseg_suggest_without_options_runs_the_default_round():
    from napari_fairseg.active import RoundConfig
    from napari_fairseg.cli.active import _round_config

    # the CLI's own conversion of its arguments, compared field by field
    assert _round_config(_parse("suggest", "project")) == RoundConfig()


def test_fairseg_simulate_without_options_leaves_the_round_to_its_defaults():
    from napari_fairseg.active.simulate import SimulationConfig
    from napari_fairseg.cli.common import parse_ints

    args = _parse("simulate", "--out", "results")
    assert all(getattr(args, name) is None for name in ("batch", "epochs", "first_epochs", "lr", "pool_split",
                                                        "eval_split", "device"))
    assert (parse_ints(args.initial), args.cycles) == (SimulationConfig().initial, SimulationConfig().cycles)


def test_fairseg_audit_without_options_audits_with_the_configs_defaults():
    from napari_fairseg.report.audit import AuditConfig

    args = _parse("audit", "cohort.csv", "--predictions", "preds", "--out", "report")
    cli = _cli_fields(AuditConfig, args, {
        "hd_mode": lambda a: a.hd, "mamamia": lambda a: True if a.mamamia else None,
        "attributes": lambda a: tuple(x.strip() for x in a.attributes.split(",") if x.strip())})
    assert cli == _defaults(AuditConfig(), cli)
    assert {"hd_mode", "empty_score", "min_support", "min_group_size", "n_boot", "std_ddof"} <= set(cli)


def test_fairseg_synthesize_offers_the_generators_defaults():
    from napari_fairseg.cli import build_parser
    from napari_fairseg.training.image_generator import ImageGeneratorConfig
    from napari_fairseg.training.mask_generator import MaskGeneratorConfig

    args = build_parser().parse_args(["synthesize", "c", "--attribute", "race", "--per-group", "1", "--out", "o"])
    images = ImageGeneratorConfig()
    assert args.mask_steps == MaskGeneratorConfig().steps
    assert (args.image_steps, args.size, args.width) == (images.steps, images.size, images.width)
