"""The Model & inference dock: run a checkpoint on the current case or the whole cohort.

The current case is the one whose layers carry ``metadata["fairseg"]`` (opened by the Cohort
dock, the reader or File › Open Sample). Running on it adds the prediction (Labels), the voxel
entropy overlay (nats, ``inferno``, additive, 0 … the maximum entropy), the ROI outline
(dilated prediction, seed 001 Eq. 1) and shows the case's masked scaled entropy. Running on the
cohort writes predictions, maps and ``scores.csv`` to a folder. Both run in the background with
a progress bar and Cancel; the device used is shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info
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

from ..data.layers import image_layer, labels_layer
from ..data.readers import open_cohort
from ..errors import FairSegError
from ..inference import InferenceConfig, Predictor, predict_pool_job
from ..inference.uncertainty import max_entropy
from ..models.checkpoint import check_compatible, load_checkpoint
from ..models.zoo import BUNDLED, resolve_checkpoint
from ..training import TrainConfig, model_config_for, train_job
from .workers import JobDock

FILE = "checkpoint file…"


def current_case(viewer) -> tuple[str, str, list] | None:
    """``(cohort path, case id, affine)`` of the selected layer, or of the newest tagged layer."""
    layers = [viewer.layers.selection.active] if viewer.layers.selection.active is not None else []
    layers += list(viewer.layers)[::-1]
    for layer in layers:
        tag = (layer.metadata or {}).get("fairseg", {})
        if tag.get("cohort") and tag.get("case_id"):
            return tag["cohort"], tag["case_id"], tag.get("affine")
    return None


class InferenceDock(JobDock):
    """Checkpoint, device and uncertainty settings; Run on this case / on the cohort; Cancel."""

    def __init__(self, viewer):
        super().__init__(on_state=self._on_running_changed)
        self.viewer = viewer
        self.model_combo = QComboBox()
        self.model_combo.addItems([*(f"{name} (bundled)" for name in BUNDLED), FILE])
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("path to a .pt checkpoint")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.uncertainty_combo = QComboBox()
        self.uncertainty_combo.addItems(["entropy", "mc", "tta", "none"])
        self.passes = QSpinBox()
        self.passes.setRange(2, 64)
        self.passes.setValue(8)
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText("default: <cohort folder>/predictions")
        self.train_epochs = QSpinBox()
        self.train_epochs.setRange(1, 2000)
        self.train_epochs.setValue(40)
        self.train_button = QPushButton("Train a model on the cohort")
        self.run_case_button = QPushButton("Run on this case")
        self.run_cohort_button = QPushButton("Run on the cohort")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status = QLabel("Open a case first (Cohort dock, File › Open or Open Sample).")
        self.status.setWordWrap(True)

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
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        train_row = QHBoxLayout()
        train_row.addWidget(self.train_button, 1)
        train_row.addWidget(QLabel("epochs"))
        train_row.addWidget(self.train_epochs)
        layout.addLayout(train_row)
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.model_combo.currentTextChanged.connect(
            lambda t: self.model_path.setEnabled(t == FILE))
        self.model_path.setEnabled(False)
        self.run_case_button.clicked.connect(self._on_run_case_clicked)
        self.run_cohort_button.clicked.connect(self._on_run_cohort_clicked)
        self.train_button.clicked.connect(self._on_train_clicked)
        self.cancel_button.clicked.connect(self.runner.cancel)
        viewer.layers.events.inserted.connect(self._on_layer_inserted)

    # ------------------------------------------------------------------ set-up
    def _model_ref(self) -> str:
        text = self.model_combo.currentText()
        return self.model_path.text().strip() if text == FILE else text.split(" ", 1)[0]

    def _prepare(self):
        """Cohort, case, checkpoint and predictor for a run; ``None`` after showing an error."""
        found = current_case(self.viewer)
        if found is None:
            show_error("No case is open: open one from the Cohort dock, File › Open or Open Sample first")
            return None
        cohort_path, case_id, affine = found
        try:
            cohort = open_cohort(cohort_path)
            ckpt = load_checkpoint(resolve_checkpoint(self._model_ref()))
            check_compatible(ckpt, cohort)
            settings = InferenceConfig(device=self.device_combo.currentText(),
                                       uncertainty=self.uncertainty_combo.currentText(), passes=self.passes.value())
            predictor = Predictor.from_checkpoint(ckpt, settings)
        except (FairSegError, OSError, ValueError, RuntimeError) as exc:
            show_error(f"Cannot run: {exc}")
            return None
        return cohort, case_id, affine, ckpt, predictor

    # ------------------------------------------------------------------ slots
    def _on_run_case_clicked(self) -> None:
        ready = self._prepare()
        if ready is None:
            return
        cohort, case_id, affine, ckpt, predictor = ready
        self.status.setText(f"Predicting {case_id} on {predictor.device_name}…")
        job = predict_pool_job(cohort, predictor, [case_id], keep=True, checkpoint=ckpt)
        self.runner.start(job, title=f"predict {case_id}",
                          on_done=lambda r: self._show_case(r, case_id, affine, ckpt))

    def _on_run_cohort_clicked(self) -> None:
        ready = self._prepare()
        if ready is None:
            return
        cohort, _, _, ckpt, predictor = ready
        src = Path(cohort.source)
        out = Path(self.out_dir.text().strip() or (src.parent if src.is_file() else src) / "predictions")
        self.status.setText(f"Predicting {len(cohort)} cases on {predictor.device_name} into {out}…")
        job = predict_pool_job(cohort, predictor, out_dir=out, checkpoint=ckpt)
        self.runner.start(job, title="predict cohort", on_done=lambda r: self._show_cohort(r, out))

    def _on_train_clicked(self) -> None:
        """Train the cohort's default network (light 3D U-Net / 2D U-Net) on its train split."""
        found = current_case(self.viewer)
        if found is None:
            show_error("No case is open: open one of the cohort to train on first")
            return
        try:
            cohort = open_cohort(found[0])
            config = TrainConfig(epochs=self.train_epochs.value(), lr=3e-3, device=self.device_combo.currentText())
            model_config = model_config_for(cohort, dropout=0.1)
        except (FairSegError, OSError, ValueError) as exc:
            show_error(f"Cannot train: {exc}")
            return
        src = Path(cohort.source)
        out = (src.parent if src.is_file() else src) / "models" / f"{cohort.name}-{model_config.network}.pt"
        self.status.setText(f"Training {model_config.network} for {config.epochs} epochs → {out}…")
        self.runner.start(train_job(cohort, model_config, config, out=out), title="train",
                          on_done=lambda r: self._on_trained(r, out))

    def _on_trained(self, result, out: Path) -> None:
        self.model_combo.setCurrentText(FILE)
        self.model_path.setText(str(out))
        last = result.log.iloc[-1] if len(result.log) else {}
        dice = last.get("val_dice", float("nan")) if hasattr(last, "get") else float("nan")
        self.status.setText(f"Trained on {result.meta.get('device')}: validation Dice {dice:.4f}; "
                            f"checkpoint {out} selected")

    def _on_running_changed(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.run_case_button.setEnabled(not running)
        self.run_cohort_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_layer_inserted(self, event) -> None:
        """Pick the bundled model that fits a newly opened case's cohort (unless a file is chosen)."""
        tag = (event.value.metadata or {}).get("fairseg", {})
        kind = tag.get("kind")
        if kind and self.model_combo.currentText() != FILE:
            name = "fundus" if kind in ("fairseg", "fairdomain", "image2d") else "brain"
            self.model_combo.setCurrentText(f"{name} (bundled)")

    # ------------------------------------------------------------------ results (GUI thread)
    def _show_case(self, result, case_id: str, affine, ckpt) -> None:
        pred = result.predictions[case_id]
        aff = np.asarray(affine if affine is not None else np.eye(4), dtype=float)
        meta = {"fairseg": {"case_id": case_id, "cohort": None}}
        for name in (f"{case_id} prediction", f"{case_id} entropy", f"{case_id} ROI",
                     f"{case_id} mutual information"):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        data, kw, _ = labels_layer(pred.label, aff, f"{case_id} prediction", meta)
        self.viewer.add_labels(data, **kw)
        text = f"{case_id}: predicted on {result.device}"
        if "entropy" in pred.maps:
            top = float(max_entropy(ckpt.config.head, len(ckpt.config.label_values)))
            data, kw, _ = image_layer(pred.maps["entropy"][None], aff, f"{case_id} entropy", meta)
            kw.update(colormap="inferno", blending="additive", contrast_limits=(0.0, top), opacity=0.8)
            self.viewer.add_image(data, **kw)
            data, kw, _ = labels_layer(pred.maps["roi"].astype(np.int32), aff, f"{case_id} ROI", meta)
            kw.update(opacity=1.0, colormap=DirectLabelColormap(color_dict={None: "transparent", 1: "cyan"}))
            roi = self.viewer.add_labels(data, **kw)
            roi.contour = 1  # an outline: the dilated prediction Eq. 1 averages entropy over
            if "mutual_information" in pred.maps:  # MC dropout / TTA: the epistemic part of the entropy
                data, kw, _ = image_layer(pred.maps["mutual_information"][None], aff,
                                          f"{case_id} mutual information", meta)
                kw.update(colormap="viridis", blending="additive", contrast_limits=(0.0, top), visible=False)
                self.viewer.add_image(data, **kw)
            s = pred.scores
            text += (f"; masked scaled entropy {s['masked_entropy']:.4f} nats over {s['roi_voxels']} ROI voxels"
                     + (" (empty prediction: scored as the maximum)" if s.get("roi_empty") else "")
                     + f"; mean entropy {s['mean_entropy']:.4f}")
        self.status.setText(text)

    def _show_cohort(self, result, out: Path) -> None:
        msg = f"Predicted {len(result.scores)} cases on {result.device} in {result.seconds:.1f} s → {out}"
        if "masked_entropy" in result.scores and len(result.scores):
            top = result.scores.sort_values("masked_entropy", ascending=False).head(3)
            msg += "; most uncertain: " + ", ".join(f"{r.case_id} {r.masked_entropy:.3f}" for r in top.itertuples())
        self.status.setText(msg)
        show_info(msg)

