"""The Model & inference dock: run a checkpoint on the current case or the whole cohort.

The current case is the one whose layers carry ``metadata["fairseg"]`` (opened by the Cohort
dock, the reader or File › Open Sample). Running on it adds the prediction (Labels), the voxel
entropy overlay (nats, ``inferno``, additive, 0 … the maximum entropy), the ROI outline
(dilated prediction, seed 001 Eq. 1) and shows the case's masked scaled entropy. Running on the
cohort writes predictions, maps and ``scores.csv`` to a folder. Both run in the background with
a progress bar and Cancel; the device used is shown.

"Adapt to a target cohort" (seed 002, UUDS) adapts the selected model from the open case's
cohort (the labelled source) to an unlabelled target cohort (a folder or manifest), in the
background, then shows a target case's source-only and adapted predictions with their entropy
side by side, and selects the adapted checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..data.kinds import KIND
from ..data.layers import case_layers, cohort_of, prediction_layers, side_by_side
from ..errors import user_message
from ..inference import InferenceConfig, predict_cases_job
from ..inference.uncertainty import max_entropy
from ..models.zoo import BUNDLED, bundled_models
from ..options import DEVICES, INFERENCE, ROUND, TRAIN, UNCERTAINTY
from ..training import TrainConfig, model_config_for, train_job
from .viewer_layers import FILE_ERRORS, current_case, show_layers
from .workers import JobDock

FILE = "checkpoint file…"


def case_job(cohort, model: str, case_id: str, settings: InferenceConfig, *, tag: dict, affine):
    """Predict one case and build its layers, all in the worker: the GUI thread only adds them.

    Returns ``(PoolResult, layer tuples)`` (:func:`~napari_fairseg.data.layers.prediction_layers`).
    """
    result = yield from predict_cases_job(cohort, model, [case_id], settings=settings, keep=True)
    aff = np.asarray(affine if affine is not None else np.eye(4), dtype=float)
    head = result.checkpoint.config
    top = float(max_entropy(head.head, len(head.label_values)))
    return result, prediction_layers(result.predictions[case_id], aff, case_id, {"fairseg": tag}, entropy_max=top)


def compare_job(target, models: dict[str, str], case_id: str, settings: InferenceConfig):
    """Predict one target case with each of ``models`` (title → checkpoint) and lay the results
    out side by side, each column over the case's image; returns the layer tuples and, when the
    case has a label (read for this only), each model's mean Dice over the cohort's classes."""
    from ..data.arrays import load_case
    from ..metrics.overlap import overlap_metrics

    base = case_layers(target, case_id)[:1]
    affine = base[0][1]["metadata"]["fairseg"]["affine"]
    truth = load_case(target, case_id).label  # None for an unlabelled case
    columns, shape, dice = {}, None, {}
    for title, model in models.items():
        result = yield from predict_cases_job(target, model, [case_id], settings=settings, keep=True)
        pred = result.predictions[case_id]
        top = float(max_entropy(result.checkpoint.config.head, len(result.checkpoint.config.label_values)))
        shape = pred.label.shape
        columns[title] = base + prediction_layers(pred, np.asarray(affine), case_id, {}, entropy_max=top)
        if truth is not None and truth.shape == pred.label.shape:
            scores = overlap_metrics(pred.label[None], truth[None], target.classes)
            dice[title] = float(np.mean([scores[f"dice_{c}"][0] for c in target.classes]))
    return side_by_side(columns, np.asarray(affine), shape), dice


class InferenceDock(JobDock):
    """Checkpoint, device and uncertainty settings; Run on this case / on the cohort; Cancel."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.shown: list = []
        self._build()
        self._layout()
        self._connect()

    def busy_widgets(self) -> list:
        return [self.train_button, self.run_case_button, self.run_cohort_button, self.adapt_button]

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        self.model_combo = QComboBox()
        self.model_combo.addItems([*(f"{name} (bundled)" for name in BUNDLED), FILE])
        for i, title in enumerate(bundled_models().values()):
            self.model_combo.setItemData(i, title, Qt.ItemDataRole.ToolTipRole)
        self.model_combo.setToolTip("The bundled models are demo models trained on the synthetic samples: "
                                    "train or pick your own for real scans")
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("path to a .pt checkpoint")
        self.model_path.setEnabled(False)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setCurrentText(INFERENCE["device"])
        self.uncertainty_combo = QComboBox()
        self.uncertainty_combo.addItems(UNCERTAINTY)
        self.uncertainty_combo.setCurrentText(INFERENCE["uncertainty"])
        self.passes = QSpinBox()
        self.passes.setRange(2, 64)
        self.passes.setValue(INFERENCE["passes"])
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText("default: <cohort folder>/predictions")
        self.train_epochs = QSpinBox()
        self.train_epochs.setRange(1, 2000)
        self.train_epochs.setValue(TRAIN["epochs"])
        self.train_button = QPushButton("Train a model on the cohort")
        self.run_case_button = QPushButton("Run on this case")
        self.run_cohort_button = QPushButton("Run on the cohort")
        self.target_path = QLineEdit()
        self.target_path.setPlaceholderText("target cohort folder or manifest (unlabelled is fine)")
        self.adapt_epochs = QSpinBox()
        self.adapt_epochs.setRange(1, 2000)
        self.adapt_epochs.setValue(TRAIN["epochs"])
        self.adapt_button = QPushButton("Adapt to a target cohort")
        self.adapt_button.setToolTip("Seed 002 (UUDS): adapt the selected model from the open case's cohort "
                                     "(labelled) to the target cohort (its labels are not used), then compare "
                                     "source-only and adapted predictions on a target case")
        self.status = QLabel("Open a case first (Cohort dock, File › Open or Open Sample).")
        self.status.setWordWrap(True)
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ffb000;")
        self.warning.hide()

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("Model", self.model_combo)
        form.addRow("", self.model_path)
        form.addRow("Device", self.device_combo)
        form.addRow("Uncertainty", self.uncertainty_combo)
        form.addRow("MC passes", self.passes)
        form.addRow("Cohort output", self.out_dir)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_case_button)
        buttons.addWidget(self.run_cohort_button)
        train_row = QHBoxLayout()
        train_row.addWidget(self.train_button, 1)
        train_row.addWidget(QLabel("epochs"))
        train_row.addWidget(self.train_epochs)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addLayout(train_row)
        adapt = QFormLayout()
        adapt.addRow("Target cohort", self.target_path)
        adapt_row = QHBoxLayout()
        adapt_row.addWidget(self.adapt_button, 1)
        adapt_row.addWidget(QLabel("epochs"))
        adapt_row.addWidget(self.adapt_epochs)
        layout.addLayout(adapt)
        layout.addLayout(adapt_row)
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.warning)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.model_combo.currentTextChanged.connect(lambda t: self.model_path.setEnabled(t == FILE))
        self.run_case_button.clicked.connect(self._on_run_case_clicked)
        self.run_cohort_button.clicked.connect(self._on_run_cohort_clicked)
        self.train_button.clicked.connect(self._on_train_clicked)
        self.adapt_button.clicked.connect(self._on_adapt_clicked)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)

    # ------------------------------------------------------------------ set-up
    def _model_ref(self) -> str:
        text = self.model_combo.currentText()
        return self.model_path.text().strip() if text == FILE else text.split(" ", 1)[0]

    def _settings(self) -> InferenceConfig:
        return InferenceConfig(device=self.device_combo.currentText(),
                               uncertainty=self.uncertainty_combo.currentText(), passes=self.passes.value())

    def _prepare(self):
        """``(cohort, tag, affine, settings)`` of the open case, or ``None`` after showing why not.

        Only cheap work happens here, on the GUI thread: the model loads in the job.
        """
        found = current_case(self.viewer)
        if found is None:
            show_error("No case is open: open one from the Cohort dock, File › Open or Open Sample first")
            return None
        tag, affine = found
        if self.model_combo.currentText() == FILE and not self.model_path.text().strip():
            show_error("Choose a checkpoint file under Model first (or a bundled model)")
            return None
        try:
            return cohort_of(tag), tag, affine, self._settings()
        except FILE_ERRORS as exc:
            show_error(f"Cannot run: {user_message(exc)}")
            return None

    # ------------------------------------------------------------------ slots
    def _on_run_case_clicked(self) -> None:
        ready = self._prepare()
        if ready is None:
            return
        cohort, tag, affine, settings = ready
        case_id = tag["case_id"]
        self.warning.hide()
        self.status.setText(f"Predicting {case_id}…")
        job = case_job(cohort, self._model_ref(), case_id, settings, tag=tag, affine=affine)
        self.runner.start(job, title=f"predict {case_id}", on_done=lambda r: self._show_case(*r, tag=tag))

    def _on_run_cohort_clicked(self) -> None:
        ready = self._prepare()
        if ready is None:
            return
        cohort, _, _, settings = ready
        src = Path(cohort.source)
        out = Path(self.out_dir.text().strip() or (src.parent if src.is_file() else src) / "predictions")
        self.warning.hide()
        self.status.setText(f"Predicting {len(cohort)} cases into {out}…")
        job = predict_cases_job(cohort, self._model_ref(), out_dir=out, settings=settings)
        self.runner.start(job, title="predict cohort", on_done=lambda r: self._show_cohort(r, out))

    def _on_train_clicked(self) -> None:
        """Train the cohort's default network (light 3D U-Net / 2D U-Net) on its train split."""
        found = current_case(self.viewer)
        if found is None:
            show_error("No case is open: open one of the cohort to train on first")
            return
        try:
            cohort = cohort_of(found[0])
            # a short run on a CPU, as an active-learning round trains: its learning rate, and
            # dropout so that MC-dropout uncertainty works with the model
            config = TrainConfig(epochs=self.train_epochs.value(), lr=ROUND["lr"], device=self.device_combo.currentText())
            model_config = model_config_for(cohort, dropout=ROUND["dropout"])
        except FILE_ERRORS as exc:
            show_error(f"Cannot train: {user_message(exc)}")
            return
        src = Path(cohort.source)
        out = (src.parent if src.is_file() else src) / "models" / f"{cohort.name}-{model_config.network}.pt"
        self.status.setText(f"Training {model_config.network} for {config.epochs} epochs → {out}…")
        self.runner.start(train_job(cohort, model_config, config, out=out), title="train",
                          on_done=lambda r: self._on_trained(r, out))

    def _on_adapt_clicked(self) -> None:
        """Adapt the selected model to the target cohort, then compare on a target case."""
        from ..data.readers import open_cohort
        from ..models.zoo import resolve_checkpoint
        from ..training.adapt import adapt_job, check_pair, same_cohort

        found = current_case(self.viewer)
        if found is None:
            show_error("No case is open: open a case of the labelled source cohort first")
            return
        if not self.target_path.text().strip():
            show_error("Type the target cohort's folder or manifest under Target cohort first")
            return
        try:
            source = cohort_of(found[0])
            target = open_cohort(self.target_path.text().strip())
            if same_cohort(source, target):
                show_error(f"The open case {found[0]['case_id']} belongs to {target.name!r}, the cohort typed as the "
                           "target: open a case of the labelled source cohort (Cohort dock), or type another target")
                return
            check_pair(source, target)
            init = str(resolve_checkpoint(self._model_ref()))
            config = TrainConfig(epochs=self.adapt_epochs.value(), lr=1e-3, device=self.device_combo.currentText())
        except FILE_ERRORS as exc:
            show_error(f"Cannot adapt: {user_message(exc)}")
            return
        src = Path(target.source)
        out = (src.parent if src.is_file() else src) / "models" / f"{source.name}-to-{target.name}-uuds.pt"
        settings = self._settings()
        tests = target.cases.loc[target.cases["split"] == "test", "case_id"].tolist()
        case_id = (tests or target.case_ids)[0]
        self.status.setText(f"Adapting {source.name} → {target.name} for {config.epochs} epochs → {out}…")

        def job():
            adapted = yield from adapt_job(source, target, config, init=init, out=out)
            layers, dice = yield from compare_job(target, {"source only": init, "adapted": str(out)}, case_id,
                                                  settings)
            return layers, dice, adapted.meta.get("uuds_start", {})

        self.runner.start(job(), title="adapt", on_done=lambda done: self._on_adapted(*done, out, target, case_id))

    def _on_adapted(self, layers, dice: dict, start: dict, out: Path, target, case_id: str) -> None:
        self.shown = show_layers(self.viewer, self.shown, layers)
        self.viewer.reset_view()
        self.model_combo.setCurrentText(FILE)
        self.model_path.setText(str(out))
        inverted = " (target contrast inverted first)" if any(g < 0 for g in start.get("gain", [])) else ""
        scores = (f" Dice against its label (not used in adaptation): source only {dice['source only']:.3f}, "
                  f"adapted {dice['adapted']:.3f}." if len(dice) == 2 else "")
        self.status.setText(f"Adapted to {target.name}{inverted}: {case_id} source only (left) and adapted (right), "
                            f"with their entropy.{scores} Checkpoint {out} selected")

    def _on_trained(self, result, out: Path) -> None:
        self.warning.hide()  # it spoke of the previous model
        self.model_combo.setCurrentText(FILE)
        self.model_path.setText(str(out))
        last = result.log.iloc[-1] if len(result.log) else {}
        dice = last.get("val_dice", float("nan")) if hasattr(last, "get") else float("nan")
        self.status.setText(f"Trained on {result.meta.get('device')}: validation Dice {dice:.4f}; "
                            f"checkpoint {out} selected")

    def _on_layer_inserted(self, event) -> None:
        """Pick the bundled model that fits a newly opened case's cohort (unless a file is chosen)."""
        tag = (event.value.metadata or {}).get("fairseg", {})
        kind = tag.get("kind")
        if kind and self.model_combo.currentText() != FILE:
            name = KIND[kind].sample if kind in KIND else "brain"  # a foreign tag: the 3D model, as ever
            self.model_combo.setCurrentText(f"{name} (bundled)")
        if tag.get("case_id") and tag.get("cohort") and self.status.text().startswith("Open a case first"):
            self.status.setText(f"{tag['case_id']} is open: Run on this case, or on its cohort.")

    # ------------------------------------------------------------------ results (GUI thread)
    def _show_warnings(self, kinds: list[str], lines: list[str]) -> None:
        """Say in one short line when the input is unlike the model's training data; the full
        sentences are the line's tooltip."""
        self.warning.setText(f"⚠ Unlike the model's training data ({', '.join(dict.fromkeys(kinds))}): results "
                             "may be unreliable. Hover for details." if lines else "")
        self.warning.setToolTip("<br>".join(lines))
        self.warning.setVisible(bool(lines))

    def _show_case(self, result, layers, *, tag: dict) -> None:
        case_id = tag["case_id"]
        pred = result.predictions[case_id]
        self.shown = show_layers(self.viewer, self.shown, layers)
        text = f"{case_id}: predicted on {result.device}"
        if "entropy" in pred.maps:
            s = pred.scores
            text += (f"; masked scaled entropy {s['masked_entropy']:.4f} nats over {s['roi_voxels']} ROI voxels"
                     + (" (empty prediction: scored as the maximum)" if s.get("roi_empty") else "")
                     + f"; mean entropy {s['mean_entropy']:.4f}")
        self.status.setText(text)
        found = result.warnings.get(case_id, [])
        self._show_warnings([w.kind for w in found], [w.message for w in found])

    def _show_cohort(self, result, out: Path) -> None:
        msg = f"Predicted {len(result.scores)} cases on {result.device} in {result.seconds:.1f} s → {out}"
        if "masked_entropy" in result.scores and len(result.scores):
            top = result.scores.sort_values("masked_entropy", ascending=False).head(3)
            msg += "; most uncertain: " + ", ".join(f"{r.case_id} {r.masked_entropy:.3f}" for r in top.itertuples())
        self.status.setText(msg)
        self._show_warnings([w.kind for ws in result.warnings.values() for w in ws], result.warning_summary)
        show_info(msg)

