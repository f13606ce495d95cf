"""Prediction: one network on one device, whole images or sliding windows, over a pool of cases.

:class:`Predictor` turns normalised images ``(B, C, *S)`` into probabilities and uncertainty
maps on its device; :meth:`Predictor.predict_job` does it as a job that yields a ``forward``
progress event after every forward pass (each MC-dropout / TTA pass, each batch of sliding
windows), so that cancelling one large case is prompt. :func:`predict_pool_job` runs it over
many cases of a cohort in batches, decoding the next batch from disk in a background thread
while the current one computes, and yields a ``predict`` event per batch; it compares every
case with the checkpoint's training geometry (:mod:`.domain`) and reports the differences.
:func:`predict_cases_job` also loads the checkpoint inside the job (GUI: never on its thread).

Every case is prepared with the model's preprocessing pipeline (:attr:`Predictor.pipeline`, read
from the checkpoint by :func:`~napari_fairseg.data.pipeline.pipeline_of`: orientation, spacing,
crop, normalisation) and every prediction, probability and uncertainty map comes back on the
case's **original grid** (:func:`~napari_fairseg.data.pipeline.invert`), so files are written
with the source affine and the viewer overlays them on the image as read. Checkpoints without a
pipeline keep today's whole-image normalisation on the native grid.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.arrays import CaseData, load_image, prediction_path, save_label
from ..data.atomic import atomic_path, mark_output, path_inside, write_csv_atomic
from ..data.kinds import kind_of
from ..data.manifest import Cohort, refuse_overwriting_inputs
from ..data.pipeline import Pipeline, invert, legacy_pipeline, pipeline_of, prepare_case
from ..errors import InputDataError
from ..models.checkpoint import Checkpoint, check_compatible, load_checkpoint
from ..models.networks import ModelConfig, pad_to_divisible, size_divisor
from ..models.preprocess import match_channels
from ..models.zoo import resolve_checkpoint
from ..options import INFERENCE, PREFETCH, UNCERTAINTY
from ..progress import Job, Progress, run_job
from .device import autocast, choose_device, describe
from .distributed import Distributed
from .domain import DomainWarning, check_input, geometry_of, summarise_warnings
from .sliding import sliding_window_steps, window_batches
from .uncertainty import (
    EMPTY_RULES,
    PassAccumulator,
    decode,
    dilated_boxes,
    entropy,
    masked_scaled_entropy,
    masked_scaled_entropy_in_boxes,
    max_entropy,
    paste_boxes,
    probabilities,
)


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a model.

    Attributes
    ----------
    device : str
        ``auto`` (CUDA → MPS → CPU), ``cuda``, ``mps`` or ``cpu``.
    amp : bool
        Mixed precision (float16) on CUDA; ignored elsewhere.
    batch_size : int
        Cases per forward pass (cases of one shape are batched together).
    sw_batch_size : int
        Windows per forward pass in sliding-window inference.
    overlap : float
        Sliding-window overlap fraction in [0, 1).
    uncertainty : str
        ``none``; ``entropy`` (of one deterministic pass); ``mc`` (mean of ``passes`` MC-dropout
        passes, plus mutual information); ``tta`` (mean over the identity and one flip per
        spatial axis, plus mutual information).
    passes : int
        MC-dropout passes.
    roi_radius : int
        Dilation of the predicted mask for the masked scaled entropy, in voxels.
    empty : str
        Score of a case whose prediction is empty (see :func:`~.uncertainty.masked_scaled_entropy`).
    seed : int
        Seeds the dropout masks of MC passes.
    prefetch : str
        Decode the next batch in a background thread while this one computes: ``on``,
        ``off``, or ``auto`` — on when the model runs on a GPU or the CPU has cores torch does
        not use (measured: on a 2-core CPU both fight for the same cores and prefetching
        costs ~15%; see ``benchmarks/bench_engine.py``).
    maps : bool
        Keep whole-image maps (probability, entropy, ROI, mutual information) and the mean
        entropy. ``False`` is pool scoring for active learning: label and masked scaled entropy
        only, the entropy computed inside the ROI alone (same values, less work).
    """

    device: str = INFERENCE["device"]
    amp: bool = INFERENCE["amp"]
    batch_size: int = INFERENCE["batch_size"]
    sw_batch_size: int = INFERENCE["sw_batch_size"]
    overlap: float = INFERENCE["overlap"]
    uncertainty: str = INFERENCE["uncertainty"]
    passes: int = INFERENCE["passes"]
    roi_radius: int = INFERENCE["roi_radius"]
    empty: str = INFERENCE["empty"]
    seed: int = INFERENCE["seed"]
    prefetch: str = INFERENCE["prefetch"]
    maps: bool = INFERENCE["maps"]

    def __post_init__(self):
        if self.uncertainty not in UNCERTAINTY:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTY}, got {self.uncertainty!r}")
        if self.empty not in EMPTY_RULES:
            raise ValueError(f"empty must be one of {EMPTY_RULES}, got {self.empty!r}")
        if self.batch_size < 1 or self.sw_batch_size < 1:
            raise ValueError("batch_size and sw_batch_size must be >= 1")
        if self.uncertainty == "mc" and self.passes < 2:
            raise ValueError(f"MC dropout needs passes >= 2, got {self.passes}")
        if self.prefetch not in PREFETCH:
            raise ValueError(f"prefetch must be one of {PREFETCH}, got {self.prefetch!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.roi_radius < 0:
            raise ValueError(f"roi_radius must be >= 0, got {self.roi_radius}")


@dataclass
class CasePrediction:
    """A case's prediction and maps, aligned with its image (numpy, on the CPU).

    Arrays lie on the case's original grid (that of :func:`~napari_fairseg.data.arrays.load_image`),
    whatever grid the model predicted on; the ``scores`` are computed on the model's grid.

    Attributes
    ----------
    label : numpy.ndarray
        ``(*S)`` int16 class map.
    maps : dict of str to numpy.ndarray
        ``probability`` ``(K, *S)`` (K = 1 foreground for a sigmoid head), ``entropy`` ``(*S)``,
        ``roi`` ``(*S)`` bool and, with MC / TTA, ``mutual_information`` ``(*S)``; float32, nats.
    scores : dict
        ``mean_entropy``, ``masked_entropy`` (seed 001 Eq. 1), ``roi_voxels``, ``roi_empty``,
        ``foreground_voxels``.
    """

    case_id: str
    label: np.ndarray
    maps: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)


def _dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


#: a whole-image model (no patch) meets an image over this many times its largest training image
#: on some axis through sliding windows of its training size: it sees the field of view it was
#: trained on, memory stays bounded, and Cancel and progress come per window batch, not per volume
WHOLE_IMAGE_FACTOR = 2
#: voxels per forward step of such windows (~0.3 s of the bundled brain model on 2 CPU cores)
STEP_VOXELS = 1 << 21


class _PrivateRng:
    """A random stream of its own for MC dropout, swapped in around each step of a job.

    Seeded like ``torch.manual_seed(seed)`` and carried from step to step, so the dropout masks
    are those of an uninterrupted run, while the global random state between steps (whoever
    runs while the job is suspended) is left as it was.
    """

    def __init__(self, seed: int, device: torch.device):
        self.cuda = device.type == "cuda"
        outer = self._get()
        torch.manual_seed(seed)
        self.state = self._get()
        self._set(outer)

    def _get(self):
        return torch.random.get_rng_state(), (torch.cuda.get_rng_state_all() if self.cuda else None)

    def _set(self, state) -> None:
        torch.random.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state_all(state[1])

    @contextlib.contextmanager
    def active(self):
        outer = self._get()
        self._set(self.state)
        try:
            yield
        finally:
            self.state = self._get()
            self._set(outer)


class Predictor:
    """A network on a device, ready to predict normalised images.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits ``(B, K, *S)``.
    config : ModelConfig
    settings : InferenceConfig
    window : sequence of int, optional
        A whole-image model's training image size (its sliding window on much larger images).
    pipeline : Pipeline, optional
        How pool jobs prepare each case (the checkpoint's, :func:`~napari_fairseg.data.pipeline.pipeline_of`);
        default :func:`~napari_fairseg.data.pipeline.legacy_pipeline` of ``config``.
    """

    def __init__(self, model: nn.Module, config: ModelConfig, settings: InferenceConfig = InferenceConfig(), *,
                 window: Sequence[int] | None = None, pipeline: Pipeline | None = None):
        self.config, self.settings = config, settings
        self.pipeline = pipeline if pipeline is not None else legacy_pipeline(config)
        self.device = choose_device(settings.device)
        self.model = model.to(self.device).eval()
        self.divisor = size_divisor(config)
        # the sliding window: the model's patch, else (whole-image models) its training image size,
        # used only for images over WHOLE_IMAGE_FACTOR times that size on some axis
        self.window = tuple(config.patch_size) if config.patch_size is not None else (
            None if window is None else tuple(-(-int(w) // self.divisor) * self.divisor for w in window))

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, settings: InferenceConfig = InferenceConfig()) -> Predictor:
        """The checkpoint's network and preprocessing pipeline (a refused pipeline raises
        :class:`~napari_fairseg.errors.InputDataError` naming the file, before the network is built)."""
        pipeline = pipeline_of(ckpt)
        record = geometry_of(ckpt)
        window = record["size"]["max"] if record is not None else None
        if pipeline.size is not None:  # every input is resized to the training size
            window = list(pipeline.size)
        return cls(ckpt.build("cpu"), ckpt.config, settings, window=window, pipeline=pipeline)

    @property
    def device_name(self) -> str:
        return describe(self.device)

    @property
    def prefetch(self) -> bool:
        """Whether pool jobs decode the next batch while this one computes."""
        if self.settings.prefetch != "auto":
            return self.settings.prefetch == "on"
        return self.device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()

    # ------------------------------------------------------------------ forward
    def _step(self, rng: _PrivateRng | None = None) -> contextlib.ExitStack:
        """The context of one step of computation: inference mode, autocast and, for MC, its RNG.

        Jobs enter it around each step and never yield inside it, so a suspended job leaves
        its consumer's grad mode, autocast and random state as they were.
        """
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.settings.amp))
        if rng is not None:
            stack.enter_context(rng.active())
        return stack

    def _sliding(self, spatial: Sequence[int]) -> bool:
        if self.window is None or len(self.window) != len(spatial):
            return False
        factor = 1 if self.config.patch_size is not None else WHOLE_IMAGE_FACTOR
        return any(s > factor * w for s, w in zip(spatial, self.window, strict=True))

    def forward_steps(self, shape: Sequence[int]) -> int:
        """Forward passes of one prediction pass over a batch of ``shape`` ``(B, C, *S)``."""
        if not self._sliding(shape[2:]):
            return 1
        return window_batches(shape[2:], self.window, self.sw_batch_size, shape[0],
                              overlap=self.settings.overlap)

    @property
    def sw_batch_size(self) -> int:
        """Windows per forward step: the setting for patch models; for a whole-image model's
        training-size windows, enough to fill about :data:`STEP_VOXELS` (small 2D windows one
        by one would cost far more than the whole image)."""
        if self.config.patch_size is not None or self.window is None:
            return self.settings.sw_batch_size
        return max(self.settings.sw_batch_size, STEP_VOXELS // int(np.prod(self.window)))

    def passes(self, spatial_dims: int | None = None) -> int:
        """Prediction passes per batch: MC-dropout passes, 1 + one flip per axis for TTA, else 1."""
        mode = self.settings.uncertainty
        if mode == "mc":
            return self.settings.passes
        return 1 + (spatial_dims or self.config.spatial_dims) if mode == "tta" else 1

    def _logits_steps(self, x: torch.Tensor, tick: Callable[[], Progress],
                      rng: _PrivateRng | None = None) -> Generator[Progress, None, torch.Tensor]:
        """Logits ``(B, K, *S)`` float32 for normalised images ``x`` ``(B, C, *S)`` on the device.

        Images larger than the model's patch — or, for a whole-image model, over
        :data:`WHOLE_IMAGE_FACTOR` times its training image size on some axis — go through
        sliding-window inference (Gaussian blending, MONAI's windows; one step per window
        batch); others are padded to the network's size divisor and cropped back (one step).
        """
        def step():
            return self._step(rng)

        if self._sliding(x.shape[2:]):
            windows = sliding_window_steps(x, self.window, self.sw_batch_size, self.model,
                                           overlap=self.settings.overlap, mode="gaussian", step=step)
            while True:
                try:
                    next(windows)
                except StopIteration as stop:
                    out = stop.value
                    break
                yield tick()
        else:
            with step():
                xp, crop = pad_to_divisible(x, self.divisor, minimum=self.config.patch_size)
                out = self.model(xp)[crop]
            yield tick()
        return out.float()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, *S)`` float32 for normalised images ``x`` ``(B, C, *S)`` on the device."""
        return run_job(self._logits_steps(x, lambda: Progress("forward")))

    def _passes(self, x: torch.Tensor, tick: Callable[[], Progress]
                ) -> Generator[Progress, None, PassAccumulator | torch.Tensor]:
        mode, head = self.settings.uncertainty, self.config.head
        if mode not in ("mc", "tta"):
            return probabilities((yield from self._logits_steps(x, tick)), head)
        acc = PassAccumulator(head)
        if mode == "mc":
            drops = _dropout_modules(self.model)
            if not drops:
                raise InputDataError(None, "MC dropout needs a model trained with dropout > 0; this one has "
                                     "no dropout layers (use uncertainty 'tta', or train with --dropout 0.1)")
            rng = _PrivateRng(self.settings.seed, self.device)
            try:
                for m in drops:
                    m.train()
                for _ in range(self.settings.passes):
                    acc.add(probabilities((yield from self._logits_steps(x, tick, rng)), head))
            finally:
                for m in drops:
                    m.eval()
        elif mode == "tta":
            acc.add(probabilities((yield from self._logits_steps(x, tick)), head))
            for axis in range(2, x.ndim):
                flipped = yield from self._logits_steps(torch.flip(x, (axis,)), tick)
                acc.add(torch.flip(probabilities(flipped, head), (axis,)))
        return acc

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prediction, uncertainty maps and scores for a batch ``(B, C, *S)``, on the device.

        Returns a dict of tensors: ``probability`` ``(B, K, *S)``, ``label`` ``(B, *S)``,
        ``entropy`` and ``roi`` ``(B, *S)``, ``mutual_information`` (MC / TTA only), and per-case
        ``(B,)`` ``mean_entropy``, ``masked_entropy``, ``roi_voxels``, ``roi_empty``,
        ``foreground_voxels``. :meth:`predict_job` is the same as a cancellable job.
        """
        return run_job(self.predict_job(x))

    def predict_job(self, x: torch.Tensor, *, label: str = "") -> Job[dict[str, torch.Tensor]]:
        """:meth:`predict` as a job: yields ``Progress("forward", k, total, ...)`` after every forward pass.

        ``total`` is passes × window batches (:meth:`passes`, :meth:`forward_steps`); closing the
        job between events stops it there (dropout back off, random state untouched).
        ``label`` starts each event's message (the case ids).
        """
        s, cfg = self.settings, self.config
        x = x.to(self.device, non_blocking=True)
        per_pass, n_pass = self.forward_steps(tuple(x.shape)), self.passes(x.ndim - 2)
        counter = iter(range(1, per_pass * n_pass + 1))

        def tick() -> Progress:
            k = next(counter)
            where = f"pass {(k - 1) // per_pass + 1}/{n_pass}" if n_pass > 1 else ""
            if per_pass > 1:
                where += (", " if where else "") + f"windows {(k - 1) % per_pass + 1}/{per_pass}"
            return Progress("forward", k, per_pass * n_pass, ": ".join(t for t in (label, where) if t))

        acc = yield from self._passes(x, tick)
        prob = acc.mean() if isinstance(acc, PassAccumulator) else acc
        out = {"probability": prob, "label": decode(prob, cfg.head, cfg.label_values)}
        if s.uncertainty == "none":
            return out
        top = max_entropy(cfg.head, len(cfg.label_values))
        fg = out["label"] != 0
        boxes = dilated_boxes(fg, s.roi_radius)
        out["foreground_voxels"] = torch.tensor([0 if b is None else int(fg[i][b[0]].sum())
                                                 for i, b in enumerate(boxes)])
        out["roi_voxels"] = torch.tensor([0 if b is None else int(b[1].sum()) for b in boxes])
        if not s.maps:
            del out["probability"]
            out["masked_entropy"], out["roi_empty"] = masked_scaled_entropy_in_boxes(
                prob, boxes, cfg.head, empty=s.empty, max_value=top)
            return out
        roi = paste_boxes(boxes, fg)
        dims = tuple(range(1, roi.ndim))
        ent = entropy(prob, cfg.head)
        out["masked_entropy"], out["roi_empty"] = masked_scaled_entropy(ent, roi, empty=s.empty, max_value=top)
        out.update(entropy=ent, roi=roi, mean_entropy=ent.mean(dim=dims))
        if isinstance(acc, PassAccumulator):
            out["mutual_information"] = acc.mutual_information()
        return out


# --------------------------------------------------------------------------- pool
PER_CASE_SCORES = ("mean_entropy", "masked_entropy", "roi_voxels", "roi_empty", "foreground_voxels")
#: Joins a case's warning sentences in the ``warnings`` column of the scores.
WARNING_SEP = " | "


def _split(out: dict[str, torch.Tensor], ids: Sequence[str]) -> list[CasePrediction]:
    cpu = {k: v.detach().cpu() for k, v in out.items()}
    preds = []
    for i, cid in enumerate(ids):
        maps = {k: cpu[k][i].numpy() for k in ("probability", "entropy", "roi", "mutual_information") if k in cpu}
        scores = {k: cpu[k][i].item() for k in PER_CASE_SCORES if k in cpu}
        if "roi_empty" in scores:
            scores["roi_empty"] = bool(scores["roi_empty"])
        preds.append(CasePrediction(cid, cpu["label"][i].numpy(), maps, scores))
    return preds


def _decode_batch(cohort: Cohort, ids: Sequence[str], pipeline: Pipeline,
                  channels: int) -> list[tuple[CaseData, np.ndarray, str | None, dict]]:
    """``(case, prepared image, note, prepared)`` per case: the raw case (for its geometry and
    the domain checks), the image the model sees, a note when an RGB photo for a 1-channel model
    was converted to grey, and the :func:`~napari_fairseg.data.pipeline.prepare_case` dict that
    :func:`_on_original_grid` inverts."""
    out = []
    for cid in ids:
        case = load_image(cohort, cid)
        case.image, note = match_channels(case.image, channels)
        prepared = prepare_case(cohort, pipeline, case)
        out.append((case, prepared["image"].as_tensor().numpy(), note, prepared))
    return out


def _on_original_grid(pred: CasePrediction, prepared: dict, head: str) -> CasePrediction:
    """``pred`` (on the prepared grid) with its label and maps brought back to the case's grid.

    Labels and the ROI by nearest neighbour; probabilities and uncertainty maps by the image's
    interpolation. Outside a crop the label is background, uncertainty 0 and, for a softmax head,
    the background probability 1 (it is 1 minus the other classes' there and everywhere).
    """
    if not prepared["image"].applied_operations:
        return pred
    label = np.rint(invert(prepared, pred.label[None].astype(np.float32), nearest=True)[0]).astype(pred.label.dtype)
    maps = {}
    for name, arr in pred.maps.items():
        if name == "roi":
            maps[name] = invert(prepared, arr[None].astype(np.float32), nearest=True)[0] > 0.5
        elif name == "probability" and head == "softmax" and arr.shape[0] > 1:
            rest = np.clip(invert(prepared, arr[1:], nearest=False), 0, 1)
            maps[name] = np.concatenate([np.clip(1 - rest.sum(axis=0, keepdims=True), 0, 1), rest]).astype(np.float32)
        elif name == "probability":
            maps[name] = np.clip(invert(prepared, arr, nearest=False), 0, 1).astype(np.float32)
        else:
            maps[name] = np.maximum(invert(prepared, arr[None], nearest=False)[0], 0).astype(np.float32)
    return CasePrediction(pred.case_id, label, maps, pred.scores)


def _shape_groups(decoded):
    groups: dict[tuple, list] = {}
    for item in decoded:
        groups.setdefault(item[1].shape, []).append(item)
    return list(groups.values())


class _Ready:
    """An already computed result with a future's ``result()``."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


@dataclass
class PoolResult:
    """What :func:`predict_pool_job` returns.

    Attributes
    ----------
    scores : pandas.DataFrame
        One row per case: ``case_id`` and :data:`PER_CASE_SCORES`.
    predictions : dict of str to CasePrediction
        Only when the job was asked to ``keep`` them.
    device : str
    seconds : float
        Wall time of the job.
    warnings : dict of str to list of DomainWarning
        Per case id, how it differs from the model's training data (``kind`` and ``message``)
        (:func:`~.domain.input_warnings`); only cases with warnings, and only when the job was
        given the ``checkpoint``.
    warning_summary : list of str
        One line per kind of warning with its number of cases (:func:`~.domain.summarise_warnings`),
        for a status line or the terminal.
    checkpoint : Checkpoint or None
        The checkpoint the job was given (its head and labels scale the entropy maps).
    """

    scores: pd.DataFrame
    predictions: dict = field(default_factory=dict)
    device: str = ""
    seconds: float = 0.0
    warnings: dict = field(default_factory=dict)
    warning_summary: list = field(default_factory=list)
    checkpoint: Checkpoint | None = None


def predict_pool_job(cohort: Cohort, predictor: Predictor, case_ids: Sequence[str] | None = None, *,
                     out_dir: str | Path | None = None, keep: bool = False, write_maps: bool = True,
                     checkpoint: Checkpoint | None = None, dist: Distributed | None = None) -> Job[PoolResult]:
    """Predict (and score) cases of ``cohort`` in batches; yields one progress event per batch.

    Parameters
    ----------
    case_ids : sequence of str, optional
        Cases to predict (default: all).
    out_dir : path, optional
        Write ``<case_id>`` predictions in the cohort's format and uncertainty maps under
        ``<out_dir>/maps`` (NIfTI with the source affine, or npz), plus ``scores.csv``. A folder
        that is the cohort's own or holds any of its input files is refused before any work
        (:func:`~napari_fairseg.data.manifest.refuse_overwriting_inputs`).
    keep : bool
        Return every :class:`CasePrediction` in memory (for the viewer and active learning).
    checkpoint : Checkpoint, optional
        Checked against the cohort (task, channels, dimensions) before any work, and each case
        against its training geometry: the differences go to the result's ``warnings`` and to a
        ``warnings`` column of the scores (sentences joined by `` | ``, empty for none). Its
        pipeline (:func:`~napari_fairseg.data.pipeline.pipeline_of`) prepares the cases; without
        it, the predictor's.
    dist : Distributed, optional
        Under ``torchrun`` (:func:`~.distributed.session`): this process predicts, writes and keeps
        only its :meth:`~.distributed.Distributed.shard` of the cases; the scores and warnings of
        every rank are gathered, so each rank returns the whole table (in ``case_ids`` order), and
        rank 0 alone writes ``scores.csv``. Progress counts this rank's cases.

    Each case is prepared by the pipeline and its prediction and maps — written and kept — are
    brought back to its original grid; the scores are those of the model's grid.

    Yields ``predict`` events per batch and, within a batch, ``forward`` events per forward
    pass (:meth:`Predictor.predict_job`).
    """
    t0 = time.perf_counter()
    dist = dist or Distributed()
    order = list(cohort.case_ids if case_ids is None else case_ids)
    unknown = [c for c in order if c not in set(cohort.case_ids)]
    if unknown:
        raise InputDataError(cohort.source, f"unknown case ids {unknown[:5]}")
    ids = dist.shard(order)
    bs = predictor.settings.batch_size
    batches = [ids[i:i + bs] for i in range(0, len(ids), bs)]
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        refuse_overwriting_inputs(out, cohort)
    pipeline = pipeline_of(checkpoint) if checkpoint is not None else predictor.pipeline
    rows, kept, warned = [], {}, {}
    yield Progress("predict", 0, len(ids), f"on {predictor.device_name}")
    channels = predictor.config.in_channels
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fairseg-decode") as pool:
        def fetch(i):
            if predictor.prefetch:
                return pool.submit(_decode_batch, cohort, batches[i], pipeline, channels)
            return _Ready(_decode_batch(cohort, batches[i], pipeline, channels))

        future = fetch(0) if batches else None
        done = 0
        for b in range(len(batches)):
            decoded = future.result()
            if b + 1 < len(batches):  # with prefetch, the next batch decodes while this one computes
                future = fetch(b + 1)
            if b == 0 and checkpoint is not None:
                check_compatible(checkpoint, cohort, image_shape=decoded[0][1].shape)
            for group in _shape_groups(decoded):
                x = torch.from_numpy(np.stack([g[1] for g in group]))
                if x.shape[1] != predictor.config.in_channels or x.ndim - 2 != predictor.config.spatial_dims:
                    raise InputDataError(group[0][0].case_id, f"image shape {tuple(x.shape[1:])} does not fit the "
                                         f"model ({predictor.config.in_channels} channel(s), "
                                         f"{predictor.config.spatial_dims}D)")
                names = [g[0].case_id for g in group]
                label = names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"
                preds = _split((yield from predictor.predict_job(x, label=label)), names)
                for (case, _, note, prepared), pred in zip(group, preds, strict=True):
                    pred = _on_original_grid(pred, prepared, predictor.config.head)
                    if out is not None:
                        mark_output(out)  # never read back as input, e.g. npz predictions in a FairSeg folder
                        write_case_outputs(cohort, out, case, pred, maps=write_maps)
                    row = {"case_id": case.case_id, **pred.scores}
                    if checkpoint is not None:
                        found = check_input(checkpoint, case.image, case.spacing,
                                            resampled=pipeline.spacing is not None,
                                            normalised=pipeline.normalise != "none")
                        if note:
                            found.insert(0, DomainWarning("channels", note))
                        if found:
                            warned[case.case_id] = found
                        row["warnings"] = WARNING_SEP.join(w.message for w in found)
                    rows.append(row)
                    if keep:
                        kept[case.case_id] = pred
            done += len(decoded)
            yield Progress("predict", done, len(ids), batches[b][-1])
    if dist.active:  # every rank's rows and warnings, in the callers' case order
        parts = dist.gather((rows, warned))
        position = {c: i for i, c in enumerate(order)}
        rows = sorted((r for part, _ in parts for r in part), key=lambda r: position[r["case_id"]])
        warned = {c: ws for _, part in parts for c, ws in part.items()}
    scores = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["case_id", *PER_CASE_SCORES])
    if out is not None and not scores.empty and dist.is_main:
        write_csv_atomic(out / "scores.csv", scores)
    return PoolResult(scores, kept, predictor.device_name, time.perf_counter() - t0,
                      {c: list(ws) for c, ws in warned.items()},
                      summarise_warnings({r["case_id"]: warned.get(r["case_id"], []) for r in rows}), checkpoint)


def predict_cases_job(cohort: Cohort, model: str | Path | Checkpoint, case_ids: Sequence[str] | None = None, *,
                      settings: InferenceConfig = InferenceConfig(), out_dir: str | Path | None = None,
                      keep: bool = False, write_maps: bool = True, dist: Distributed | None = None) -> Job[PoolResult]:
    """Load a checkpoint, then :func:`predict_pool_job` — all inside the job.

    The first event is ``Progress("load", 0, 1, "Loading model…")``; the checkpoint is read,
    checked against the cohort and put on its device before the first case, so a GUI runs
    this whole job in a worker and never loads a model on its own thread.

    Parameters
    ----------
    model : str, path or Checkpoint
        A checkpoint file, or ``brain`` / ``fundus`` for the bundled DEMO checkpoints.
    case_ids, out_dir, keep, write_maps, dist
        As in :func:`predict_pool_job`.
    settings : InferenceConfig
    """
    yield Progress("load", 0, 1, "Loading model…")
    ckpt = model if isinstance(model, Checkpoint) else load_checkpoint(resolve_checkpoint(model))
    check_compatible(ckpt, cohort)
    predictor = Predictor.from_checkpoint(ckpt, settings)
    yield Progress("load", 1, 1, f"{ckpt.meta.get('display_name') or ckpt.config.network} on {predictor.device_name}")
    return (yield from predict_pool_job(cohort, predictor, case_ids, out_dir=out_dir, keep=keep,
                                        write_maps=write_maps, checkpoint=ckpt, dist=dist))


def map_path(cohort: Cohort, out_dir: str | Path, case_id: str, name: str | None = None) -> Path:
    """Where a case's uncertainty maps go: ``maps/<case_id>_<name>.nii.gz`` or ``maps/<case_id>.npz``.

    Raises :class:`~napari_fairseg.errors.InputDataError` if ``case_id`` would leave ``maps/``.
    """
    return path_inside(Path(out_dir) / "maps", kind_of(cohort).map_name(case_id, name))


def write_case_outputs(cohort: Cohort, out_dir: str | Path, case: CaseData, pred: CasePrediction, *,
                       maps: bool = True) -> Path:
    """Write a case's prediction (cohort format) and its maps; returns the prediction path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = save_label(cohort, prediction_path(cohort, out, case.case_id), pred.label, like=case)
    if not maps or not pred.maps:
        return path
    (out / "maps").mkdir(exist_ok=True)
    arrays = {}
    for name, arr in pred.maps.items():
        if name == "probability":
            arr = arr[0] if arr.shape[0] == 1 else arr
        arrays[name] = arr.astype(np.uint8) if name == "roi" else arr.astype(np.float32)
    if kind_of(cohort).nifti_maps:
        for name, arr in arrays.items():
            data = np.moveaxis(arr, 0, -1) if arr.ndim == 4 else arr  # (K, *S) → (*S, K)
            with atomic_path(map_path(cohort, out, case.case_id, name), root=out) as tmp:
                nib.save(nib.Nifti1Image(data, case.affine), str(tmp))
    else:
        with atomic_path(map_path(cohort, out, case.case_id), root=out) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path

