"""The Active learning dock: suggest cases, annotate them in the viewer, save, retrain.

A thin skin over :mod:`napari_fairseg.active`. "Suggest" runs one round
(:func:`~napari_fairseg.active.round_job`: fine-tune if the labelled set changed, evaluate,
score the pool, suggest) in the background and lists the ranked batch (case, score, group,
group weight). "Accept" opens the selected case with the round model's prediction pre-filled in
an editable Labels layer; "Save annotation" stores it as a new version (source ``human`` when
edited, ``model`` when accepted as is); "Next" moves to the next unlabelled suggestion, asking
before unsaved edits are dropped; "Retrain" forces a round with training. The plot shows
held-out Dice, Δ and ESSP per round.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import napari
import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..active import Project, RoundConfig, round_job
from ..data.arrays import load_image
from ..data.layers import case_tag, cohort_of, image_layer, labels_layer
from ..errors import InputDataError, user_message
from ..inference import InferenceConfig, predict_cases_job
from ..options import ROUND, STRATEGIES
from .viewer_layers import FILE_ERRORS, current_case, focus_on, show_layers
from .workers import JobDock


class ActiveLearningDock(JobDock):
    """Project (open or create), strategy and batch; Suggest / Accept / Save / Next / Retrain;
    per-round plot."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.project: Project | None = None
        self.case_id: str | None = None
        self.prefill: np.ndarray | None = None  # what the annotation layer held when opened / saved
        self.layers: list = []
        self._build()
        self._layout()
        self._connect()
        self._on_running_changed(False)

    def busy_widgets(self) -> list:
        return [self.suggest_button, self.retrain_button, self.accept_button, self.next_button,
                self.open_button, self.create_button]

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        self.project_edit = QLineEdit()
        self.project_edit.setPlaceholderText("project folder")
        self.project_browse = QPushButton("Folder…")
        self.open_button = QPushButton("Open project")
        self.new_cohort_edit = QLineEdit()
        self.new_cohort_edit.setPlaceholderText("cohort: manifest or folder (default: the open case's)")
        self.new_folder_edit = QLineEdit()
        self.new_folder_edit.setPlaceholderText("new project folder (default: <cohort folder>/project)")
        self.import_check = QCheckBox("Import the cohort's existing labels as version 1")
        self.create_button = QPushButton("New project")
        self.create_button.setToolTip("Create a labelling project on the cohort and open it")
        self.strategy_combo = QComboBox()
        self.strategy_combo.addItems(STRATEGIES)
        self.strategy_combo.setCurrentText(ROUND["strategy"])
        self.batch = QSpinBox()
        self.batch.setRange(1, 100)
        self.batch.setValue(ROUND["batch"])
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(ROUND["epochs"])
        self.epochs.setToolTip("fine-tuning epochs per round (3× this when training from scratch)")
        self.author_edit = QLineEdit(getpass.getuser())
        self.start_model = QLineEdit()
        self.start_model.setPlaceholderText("brain, fundus or a checkpoint (until a round model exists)")
        self.suggest_button = QPushButton("Suggest")
        self.retrain_button = QPushButton("Retrain")
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["case", "score", "group", "weight", "labelled"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(140)
        self.accept_button = QPushButton("Accept")
        self.save_button = QPushButton("Save annotation")
        self.next_button = QPushButton("Next")
        self.status = QLabel("Open a labelling project, or create one.")
        self.status.setWordWrap(True)
        self.figure = Figure(figsize=(3.2, 2.2), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)

    def _layout(self) -> None:
        row = QHBoxLayout()
        row.addWidget(self.project_edit, 1)
        row.addWidget(self.project_browse)
        row.addWidget(self.open_button)
        new = QGroupBox("New project")
        new_form = QFormLayout(new)
        new_form.addRow("Cohort", self.new_cohort_edit)
        new_form.addRow("Folder", self.new_folder_edit)
        new_form.addRow(self.import_check)
        new_form.addRow(self.create_button)
        form = QFormLayout()
        form.addRow("Strategy", self.strategy_combo)
        form.addRow("Batch", self.batch)
        form.addRow("Epochs", self.epochs)
        form.addRow("Author", self.author_edit)
        form.addRow("Start model", self.start_model)
        run = QHBoxLayout()
        for b in (self.suggest_button, self.retrain_button, self.cancel_button):
            run.addWidget(b)
        edit = QHBoxLayout()
        for b in (self.accept_button, self.save_button, self.next_button):
            edit.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(new)
        layout.addLayout(form)
        layout.addLayout(run)
        layout.addWidget(self.table, 1)
        layout.addLayout(edit)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)

    def _connect(self) -> None:
        self.project_browse.clicked.connect(self._on_browse_clicked)
        self.open_button.clicked.connect(self._on_open_clicked)
        self.create_button.clicked.connect(self._on_create_clicked)
        self.suggest_button.clicked.connect(lambda: self._run_round(train=None))
        self.retrain_button.clicked.connect(lambda: self._run_round(train=True))
        self.accept_button.clicked.connect(self._on_accept_clicked)
        self.save_button.clicked.connect(self._on_save_clicked)
        self.next_button.clicked.connect(self._on_next_clicked)
        self.table.cellDoubleClicked.connect(lambda *_: self._on_accept_clicked())

    # ------------------------------------------------------------------ project and rounds
    def open_project(self, path: str | Path) -> bool:
        try:
            project = Project.open(path)
        except FILE_ERRORS as exc:
            show_error(f"Cannot open project: {user_message(exc)}")
            return False
        self._use(project)
        return True

    def create_project(self, cohort: str | Path | None, folder: str | Path | None, *,
                       import_labels: bool = False) -> bool:
        """Create a project on ``cohort`` (default: the open case's cohort, with its declared
        classes) in ``folder`` (default: ``<cohort folder>/project``) and open it."""
        try:
            found = current_case(self.viewer)
            open_tag = found[0] if found else None
            if not cohort and open_tag is None:
                raise InputDataError(None, "give the cohort (a manifest or dataset folder), or open a case of "
                                     "it in the Cohort dock first")
            same = open_tag is not None and (not cohort or str(open_tag["cohort"]) == str(cohort))
            c = cohort_of(open_tag if same else {"cohort": str(cohort)})  # the open case's classes carry over
            src = Path(c.source)
            root = Path(folder) if folder else (src.parent if src.is_file() else src) / "project"
            project = Project.create(root, c, import_labels=import_labels, author=self.author_edit.text().strip()
                                     or "import")
        except FILE_ERRORS as exc:
            show_error(f"Cannot create the project: {user_message(exc)}")
            return False
        self._use(project)
        show_info(f"Project created in {project.root}")
        return True

    def _use(self, project: Project) -> None:
        if self.project is not None:
            self.project.close()
        self.project = project
        self.project_edit.setText(str(project.root))
        self._refresh()

    def _on_browse_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a labelling project folder")
        if path:
            self.open_project(path)

    def _on_open_clicked(self) -> None:
        text = self.project_edit.text().strip()
        if not text:
            show_error("Give the project folder first, or create a project under New project")
            return
        self.open_project(text)

    def _on_create_clicked(self) -> None:
        self.create_project(self.new_cohort_edit.text().strip() or None, self.new_folder_edit.text().strip() or None,
                            import_labels=self.import_check.isChecked())

    def _run_round(self, *, train: bool | None) -> None:
        if self.project is None:
            show_error("Open a labelling project first")
            return
        e = self.epochs.value()
        config = RoundConfig(strategy=self.strategy_combo.currentText(), batch=self.batch.value(), epochs=e,
                             first_epochs=3 * e)
        self.status.setText(f"Round {self.project.next_round_id()}: {config.strategy}…")
        start = self.start_model.text().strip() or None
        model = start if start and self.project.checkpoint_path() is None else None
        self.runner.start(round_job(self.project, config, train=train, model=model), title="active-learning round",
                          on_done=lambda r: self._refresh(r))

    def _refresh(self, result=None) -> None:
        p = self.project
        st = p.status()
        pool = st[st["split"] == "train"]
        text = f"{int(pool['labelled'].sum())} of {len(pool)} pool cases labelled"
        if result is not None:
            m = result.metrics
            head = f"Round {result.round_id} ({'trained' if m['trained'] else 'model reused'}): "
            if np.isnan(m["dice"]):  # nothing to evaluate on: say why instead of "Dice nan"
                text = (head + "held-out Dice not computed: no held-out case (split 'test' or 'val') has a "
                        "label; label some or give the cohort ground truth. " + text)
            else:
                text = head + f"held-out Dice {m['dice']:.3f}, Δ {m['delta']:.3f}, ESSP {m['essp']:.3f}. " + text
        self.status.setText(text)
        sugg = p.suggestions()
        self.table.setRowCount(len(sugg))
        for r, s in enumerate(sugg.itertuples(index=False)):
            for c, v in enumerate((s.case_id, f"{s.score:.4f}", s.group, f"{s.group_weight:.3f}",
                                   "yes" if s.labelled else "no")):
                self.table.setItem(r, c, QTableWidgetItem(str(v)))
        self.table.resizeColumnsToContents()
        self._plot(p.rounds())

    def _plot(self, rounds) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot()
        scored = not rounds.empty and "dice" in rounds and rounds["dice"].notna().any()
        if not rounds.empty and not scored:
            ax.text(0.5, 0.5, "no held-out labels:\nnothing to plot yet", ha="center", va="center",
                    fontsize=8, transform=ax.transAxes, color="0.4")
        if scored:
            for col, label in (("dice", "Dice"), ("delta", "Δ"), ("essp", "ESSP")):
                ax.plot(rounds["id"], rounds[col], marker="o", label=label)
            ax.legend(fontsize=7)
        if not rounds.empty:
            ax.set_xlim(0.5, float(rounds["id"].max()) + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(8, len(rounds)), min_n_ticks=1))
            if len(rounds) == 1:
                ax.set_xticks([int(rounds["id"].iloc[0])])
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title("held-out split per round", fontsize=8)
        self.canvas.draw_idle()

    # ------------------------------------------------------------------ annotate
    def _selected_case(self) -> str | None:
        rows = {i.row() for i in self.table.selectedItems()}
        return self.table.item(rows.pop(), 0).text() if rows else None

    def _on_accept_clicked(self) -> None:
        cid = self._selected_case()
        if cid is None:
            show_error("Select a suggested case first")
            return
        self.accept(cid)

    def accept(self, case_id: str) -> None:
        """Open ``case_id`` with the latest round model's prediction in an editable layer."""
        if not self._may_leave():
            return
        ckpt_path = self.project.checkpoint_path()
        if ckpt_path is None:
            show_error("No round model yet: press Suggest first")
            return
        job = predict_cases_job(self.project.cohort, ckpt_path, [case_id], settings=InferenceConfig(uncertainty="none"),
                                keep=True)  # the model loads in the worker
        self.runner.start(job, title=f"pre-fill {case_id}",
                          on_done=lambda r: self._show(case_id, r.predictions[case_id].label))

    def _show(self, case_id: str, prefill: np.ndarray) -> None:
        cohort = self.project.cohort
        img = load_image(cohort, case_id)
        meta = case_tag(cohort, case_id)
        annotation = labels_layer(prefill, img.affine, f"{case_id} annotation",
                                  {"fairseg": {**meta["fairseg"], "annotation": True}}, role="annotation")
        self.layers = show_layers(self.viewer, self.layers, [image_layer(img.image, img.affine, case_id, meta),
                                                             annotation])
        self.viewer.layers.selection.active = self.layers[-1]
        self.layers[-1].mode = "paint"
        focus_on(self.viewer, prefill, annotation[1]["scale"])
        self.case_id, self.prefill = case_id, np.array(prefill, copy=True)
        self.model_prefill = self.prefill.copy()
        self.status.setText(f"Annotating {case_id}: correct the prediction, then Save annotation.")

    def _annotation(self) -> np.ndarray | None:
        layer = self.layers[-1] if self.layers else None
        return None if layer is None or layer not in self.viewer.layers else np.asarray(layer.data)

    def unsaved(self) -> bool:
        data = self._annotation()
        return data is not None and self.prefill is not None and not np.array_equal(data, self.prefill)

    def _on_save_clicked(self) -> None:
        data = self._annotation()
        if data is None or self.case_id is None:
            show_error("Nothing to save: accept a suggestion first")
            return
        source = "model" if np.array_equal(data, self.model_prefill) else "human"
        try:
            version = self.project.save_annotation(self.case_id, data.copy(), author=self.author_edit.text().strip(),
                                                   source=source)
        except FILE_ERRORS as exc:
            show_error(f"Annotation of {self.case_id} NOT saved: {user_message(exc)}")
            return
        self.prefill = data.copy()
        show_info(f"Saved {self.case_id} version {version} ({source})")
        self._refresh()
        self.status.setText(f"Saved {self.case_id} version {version} ({source}). " + self.status.text())

    def _on_next_clicked(self) -> None:
        sugg = self.project.suggestions() if self.project is not None else None
        todo = [] if sugg is None else [c for c, done in zip(sugg["case_id"], sugg["labelled"], strict=True)
                                         if not done and c != self.case_id]
        if not todo:
            show_info("Every suggestion is labelled: press Suggest for the next round")
            return
        self.accept(todo[0])

    def _may_leave(self) -> bool:
        if not self.unsaved():
            return True
        answer = QMessageBox.question(self, "Unsaved annotation",
                                      f"The annotation of {self.case_id} has unsaved edits. Discard them?")
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event):  # noqa: N802 - Qt's name
        if not self._may_leave():
            event.ignore()
            return
        if self.project is not None:
            self.stop_jobs()
            self.project.close()
        super().closeEvent(event)
