"""Cross-domain adaptation (seed 002, UUDS) as a job: a labelled source cohort, an unlabelled target.

:func:`adapt_job` trains a :class:`~napari_fairseg.models.uuds.UUDSNet` — the segmenter of
``--from`` (or a new one) behind seed 002's translator and prompts — with the trainer
(:func:`~.trainer.train_job`): same progress events, Cancel, resume, per-group validation,
atomic checkpoints. What it adds is the set-up:

- the two cohorts are checked against each other (not the same cohort, same dimensionality and
  channels, labelled source training cases) and merged into one run cohort: the source's cases
  ``train`` and ``val`` cases as they are, plus the target's ``train`` split (all its cases
  when it has none) as split ``pool``, **without their labels** — a target's labels never reach adaptation;
- the model configuration gains ``extra["uuds"]`` (:class:`~napari_fairseg.models.uuds.UUDSOptions`,
  which records the source and target names); with ``init`` the segmenter starts from that
  checkpoint's weights and its pipeline, the other parts seeded;
- validation (per group) runs on the source's validation cases — the target has no labels.

The result is a normal checkpoint: ``fairseg predict``, the docks and active learning run it on
target images (segmenter of the translated image plus the prompt head).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..data.arrays import load_image
from ..data.manifest import Cohort, merge_cohorts
from ..errors import InputDataError
from ..models.checkpoint import Checkpoint, check_compatible, load_checkpoint
from ..models.networks import ModelConfig, build_network
from ..models.uuds import UUDSOptions
from ..models.zoo import resolve_checkpoint
from ..progress import Job
from .trainer import TrainConfig, TrainResult, model_config_for, train_job

#: the split that holds the target's (unlabelled) cases in the run cohort: the manifest's
#: unlabelled split (the source's own pool and test cases are left out of the run cohort)
TARGET_SPLIT = "pool"


def same_cohort(source: Cohort, target: Cohort) -> bool:
    """Whether ``target`` is ``source`` again: the same file, or all its case ids in ``source``."""
    if source.source is not None and target.source is not None:
        if Path(source.source).resolve() == Path(target.source).resolve():
            return True
    return set(source.case_ids) & set(target.case_ids) == set(target.case_ids)


def check_pair(source: Cohort, target: Cohort) -> None:
    """Refuse a source/target pair adaptation cannot use, with one line naming the problem.

    Raises
    ------
    InputDataError
        The same cohort twice (or shared case ids), different image dimensionality or channel
        counts, or a source without labelled training cases.
    """
    if same_cohort(source, target):
        raise InputDataError(target.source, f"source and target are the same cohort ({source.name!r}): adaptation "
                             "needs a second, unlabelled cohort from the target domain")
    shared = sorted(set(source.case_ids) & set(target.case_ids))
    if shared:
        raise InputDataError(target.source, f"{len(shared)} case id(s) are in both the source and the target "
                             f"cohort: {shared[:5]}; rename the target's cases")
    a, b = load_image(source, source.case_ids[0]).image, load_image(target, target.case_ids[0]).image
    if (a.ndim, a.shape[0]) != (b.ndim, b.shape[0]):
        raise InputDataError(target.source, f"target images are {b.ndim - 1}D with {b.shape[0]} channel(s) but "
                             f"source images are {a.ndim - 1}D with {a.shape[0]}: adaptation needs the same "
                             "dimensionality and channel count")
    cases = source.cases
    train = cases[cases["split"] == "train"]
    labelled = train["label"].map(lambda v: isinstance(v, str) and bool(v))
    if not labelled.any():
        raise InputDataError(source.source, f"the source cohort {source.name!r} has no labelled training cases "
                             "(split 'train' with a label): adaptation learns the task from the source's labels")


def run_cohort(source: Cohort, target: Cohort) -> Cohort:
    """The source's training and validation cases plus the target's training cases, unlabelled,
    as split ``pool``."""
    check_pair(source, target)
    kept = source.cases[source.cases["split"].isin(["train", "val"])].reset_index(drop=True)
    source = Cohort(kept, source.kind, dict(source.classes), source.name, list(source.notes), source=source.source)
    cases = target.cases
    use = cases[cases["split"] == "train"] if (cases["split"] == "train").any() else cases
    use = use.copy()
    use["split"], use["label"] = TARGET_SPLIT, ""
    unlabelled = Cohort(use.reset_index(drop=True), target.kind, dict(target.classes), target.name,
                        list(target.notes), source=target.source)
    return merge_cohorts([source, unlabelled], name=f"{source.name}→{target.name}")


def _describe(options: UUDSOptions) -> str:
    parts = [f"width {options.width}", f"{options.context} context vectors"]
    parts += [] if options.domain_prompt else ["no domain prompt"]
    parts += [] if options.segmentation_prompt else ["no segmentation prompt"]
    return ", ".join(parts)


def _adapted_init(init: Checkpoint, config: ModelConfig, seed: int) -> Checkpoint:
    """``init``'s segmenter inside a seeded :class:`UUDSNet` of ``config``, as a checkpoint."""
    torch.manual_seed(seed)
    net = build_network(config)
    if init.state_dict is not None:
        net.segmenter.load_state_dict(init.state_dict)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Checkpoint(config, dict(init.meta), state, None, init.path)


def adapt_job(source: Cohort, target: Cohort, config: TrainConfig | None = None, *,
              options: UUDSOptions | None = None, model_config: ModelConfig | None = None,
              out: str | Path | None = None, log_path: str | Path | None = None,
              init: Checkpoint | str | Path | None = None, resume: str | Path | None = None) -> Job[TrainResult]:
    """Adapt a segmentation model from labelled ``source`` to unlabelled ``target`` (seed 002).

    Parameters
    ----------
    source, target : Cohort
        The labelled source cohort (its ``train`` / ``val`` splits as in training) and the target
        cohort (its ``train`` split, or every case, is used without labels).
    config : TrainConfig, optional
        Training settings (default ``TrainConfig()``); ``uuds_weights``, ``chi``, ``uncertainty_mask`` and ``tau`` are seed
        002's. Its ``pseudo_label_split`` is set here.
    options : UUDSOptions, optional
        Network options (default ``UUDSOptions()``) and ablations; ``source`` and ``target`` are filled with the cohorts' names.
    model_config : ModelConfig, optional
        The segmenter for a new model (default: :func:`~.trainer.model_config_for` the source).
    init : Checkpoint or path, optional
        A source model whose segmenter (and pipeline) the adapted model starts from.
    resume : path, optional
        Continue an interrupted adaptation (``out`` of an earlier run, the same cohorts and settings).

    Returns
    -------
    TrainResult
        As :func:`~.trainer.train_job`; the model is a :class:`~napari_fairseg.models.uuds.UUDSNet`.
    """
    cohort = run_cohort(source, target)
    config = config or TrainConfig()
    options = replace(options or UUDSOptions(), source=source.name, target=target.name)
    if config.uuds_translation == "prompt" and not options.domain_prompt:
        raise ValueError("translation 'prompt' (seed 002's Eq. 2) needs the domain prompt: use the default "
                         "translation 'match' without a domain prompt, or keep the prompt")
    config = replace(config, pseudo_label_split=TARGET_SPLIT)
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if "uuds" not in ckpt.config.extra:
            raise InputDataError(resume, "this checkpoint is not an adaptation run's (no UUDS parts) to resume")
        stored = UUDSOptions.from_dict(ckpt.config.extra["uuds"])
        if stored != options:
            raise InputDataError(resume, "resume needs the interrupted run's cohorts and network options: it adapted "
                                 f"{stored.source!r} → {stored.target!r} with {_describe(stored)}, this run asks "
                                 f"for {options.source!r} → {options.target!r} with {_describe(options)}")
        return (yield from train_job(cohort, config=config, out=out, log_path=log_path, resume=resume))
    if init is not None:
        init = init if isinstance(init, Checkpoint) else load_checkpoint(resolve_checkpoint(init))
        if "uuds" in init.config.extra:
            raise InputDataError(init.path, "this model is already adapted; start from its source model")
        check_compatible(init, source)
        extra = {**init.config.extra, "uuds": options.to_dict()}
        init = _adapted_init(init, init.config.replace(extra=extra), config.seed)
        return (yield from train_job(cohort, config=config, out=out, log_path=log_path, init=init))
    base = model_config or model_config_for(source)
    model_config = base.replace(extra={**base.extra, "uuds": options.to_dict()})
    return (yield from train_job(cohort, model_config, config, out=out, log_path=log_path))
