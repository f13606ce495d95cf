"""The Cohort dock: open a manifest or a dataset folder, declare its classes, browse, open a case.

A thin skin over :mod:`napari_fairseg.data`: "File…" picks a manifest, "Folder…" a dataset
folder (NIfTI, PNG / JPEG / TIFF images with masks, FairSeg npz, MAMA-MIA; a ``metadata.csv``
beside the images joins attributes and, optionally, splits). "Classes" declares what the mask
values mean (``rim=1, cup=2``) when the kind's default does not fit; "From a model…" copies a
checkpoint's classes. The table lists every case with its split, whether it has ground truth,
and its attributes; the filter keeps one subgroup; opening a case adds its image (physical
scale) and ground truth, replacing the previous case's layers, with its latest prediction when
a predictions folder (the Model & inference dock's cohort output) is given.

"Add synthetic…" joins the cases a ``fairseg synthesize`` folder holds (seed 003) as training
cases flagged synthetic; the table's ``origin`` column and the filter tell them apart, and
"Real vs synthetic" shows the chosen subgroup's real cases above its generated ones.
"""

from __future__ import annotations

from pathlib import Path

import napari
import pandas as pd
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..data.arrays import load_image, load_prediction, prediction_path
from ..data.classes import format_classes, parse_classes
from ..data.layers import case_layers, gallery, labels_layer
from ..data.readers import open_cohort
from ..errors import user_message
from .viewer_layers import FILE_ERRORS, focus_on, show_layers

ALL = "(all)"
#: the table's and filter's column telling real from synthetic cases
ORIGIN = "origin"


class CohortDock(QWidget):
    """Cohort browser; ``viewer`` is the napari viewer it adds layers to."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.cohort = self.real_cohort = None
        self._gallery_caption = False
        self.case_layers: list = []
        self.columns: list[str] = []
        self._build()
        self._layout()
        self._connect()

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("manifest.csv or dataset folder")
        self.browse_button = QPushButton("File…")
        self.browse_button.setToolTip("Pick a cohort manifest (.csv)")
        self.folder_button = QPushButton("Folder…")
        self.folder_button.setToolTip("Pick a dataset folder: NIfTI, PNG/JPEG/TIFF images with masks, "
                                      "FairSeg .npz, MAMA-MIA (a metadata.csv beside the images is joined)")
        self.classes_edit = QLineEdit()
        self.classes_edit.setPlaceholderText("the kind's default; e.g. rim=1, cup=2")
        self.classes_edit.setToolTip("What the mask values mean: name=value(s), classes separated by ';' "
                                     "or ','. Empty: the default of the dataset kind.")
        self.classes_button = QPushButton("From a model…")
        self.classes_button.setToolTip("Use the classes a checkpoint (.pt) was trained for")
        self.load_button = QPushButton("Load cohort")
        self.pred_edit = QLineEdit()
        self.pred_edit.setPlaceholderText("predictions folder (optional: shows each case's prediction)")
        self.info = QLabel("No cohort loaded.")
        self.info.setWordWrap(True)
        self.attribute_combo = QComboBox()
        self.value_combo = QComboBox()
        self.table = QTableWidget(0, 0)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(180)  # stays readable when other docks stack below it
        self.open_button = QPushButton("Open case")
        self.open_button.setEnabled(False)
        self.synthetic_edit = QLineEdit()
        self.synthetic_edit.setPlaceholderText("folder written by fairseg synthesize (optional)")
        self.synthetic_button = QPushButton("Add synthetic…")
        self.synthetic_button.setToolTip("Join generated cases (seed 003) to the cohort as training cases "
                                         "flagged synthetic")
        self.gallery_button = QPushButton("Real vs synthetic")
        self.gallery_button.setToolTip("Show the chosen subgroup's real cases (top) above its synthetic ones")
        self.gallery_button.setEnabled(False)

    def _layout(self) -> None:
        top = QHBoxLayout()
        top.addWidget(self.path_edit, 1)
        top.addWidget(self.browse_button)
        top.addWidget(self.folder_button)
        classes = QHBoxLayout()
        classes.addWidget(self.classes_edit, 1)
        classes.addWidget(self.classes_button)
        form = QFormLayout()
        form.addRow("Cohort", top)
        form.addRow("Classes", classes)
        form.addRow("Predictions", self.pred_edit)
        synthetic = QHBoxLayout()
        synthetic.addWidget(self.synthetic_edit, 1)
        synthetic.addWidget(self.synthetic_button)
        form.addRow("Synthetic", synthetic)
        filt = QHBoxLayout()
        filt.addWidget(QLabel("Subgroup:"))
        filt.addWidget(self.attribute_combo, 1)
        filt.addWidget(self.value_combo, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.load_button)
        layout.addWidget(self.info)
        layout.addLayout(filt)
        layout.addWidget(self.table, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button, 1)
        buttons.addWidget(self.gallery_button, 1)
        layout.addLayout(buttons)

    def _connect(self) -> None:
        self.browse_button.clicked.connect(self._on_browse_clicked)
        self.folder_button.clicked.connect(self._on_folder_clicked)
        self.classes_button.clicked.connect(self._on_classes_from_model_clicked)
        self.load_button.clicked.connect(self._on_load_clicked)
        self.path_edit.returnPressed.connect(self._on_load_clicked)
        self.attribute_combo.currentTextChanged.connect(self._on_attribute_changed)
        self.value_combo.currentTextChanged.connect(self._on_filter_changed)
        self.open_button.clicked.connect(self._on_open_clicked)
        self.synthetic_button.clicked.connect(self._on_synthetic_clicked)
        self.synthetic_edit.returnPressed.connect(lambda: self.add_synthetic(self.synthetic_edit.text().strip()))
        self.gallery_button.clicked.connect(self.show_gallery)
        self.table.itemSelectionChanged.connect(
            lambda: self.open_button.setEnabled(bool(self.table.selectedItems())))
        self.table.cellDoubleClicked.connect(lambda *_: self._on_open_clicked())

    # ------------------------------------------------------------------ actions
    def load(self, path: str | Path) -> bool:
        """Open a cohort with the declared classes and fill the table.

        On failure the previous cohort is cleared (no stale table stays on screen), the reason
        is shown in the dock and as a notification, and ``False`` is returned.
        """
        self.path_edit.setText(str(path))
        try:
            classes = parse_classes(self.classes_edit.text())
            cohort = open_cohort(path, classes=classes)
        except FILE_ERRORS as exc:
            self._clear(f"Not loaded: {user_message(exc)}")
            show_error(f"Cannot open cohort: {user_message(exc)}")
            return False
        if self.cohort is None or str(self.cohort.source) != str(cohort.source):
            self._default_predictions(cohort)
        self.real_cohort = cohort
        self._show(cohort)
        return True

    def add_synthetic(self, path: str | Path) -> bool:
        """Join a ``fairseg synthesize`` folder's cases to the loaded cohort, flagged synthetic."""
        from ..training.synthesize import with_synthetic

        if self.cohort is None:
            show_error("Load the real cohort first, then add its synthetic cases")
            return False
        if not str(path):
            show_error("Give the folder fairseg synthesize wrote (Add synthetic…)")
            return False
        self.synthetic_edit.setText(str(path))
        try:  # from the cohort as loaded: synthetic cases added before are replaced, not doubled
            merged = with_synthetic(self.real_cohort, path)
        except FILE_ERRORS as exc:
            show_error(f"Cannot add synthetic cases: {user_message(exc)}")
            return False
        self._show(merged)
        return True

    def show_gallery(self) -> None:
        """The chosen subgroup's real cases above its synthetic ones (:func:`~..data.layers.gallery`)."""
        attribute, value = self.attribute_combo.currentText(), self.value_combo.currentText()
        if self.cohort is None or attribute not in self.cohort.attributes or value in (ALL, ""):
            show_error("Choose a subgroup first (e.g. race = Black), then Real vs synthetic")
            return
        try:
            layers = gallery(self.cohort, attribute, value)
        except FILE_ERRORS as exc:
            show_error(f"Cannot show the gallery: {user_message(exc)}")
            return
        self.case_layers = show_layers(self.viewer, self.case_layers, layers)
        shown = layers[0][1]["metadata"]["fairseg"]["gallery"]
        in_group = self.cohort.cases[attribute].astype("string") == value
        made = in_group & self.cohort.cases["case_id"].isin(self.cohort.synthetic_ids)
        real = in_group & ~made & self.cohort.cases["label"].notna()
        overlay = self.viewer.text_overlay
        overlay.text = (f"{attribute} = {value} · top row: real ({len(shown['real'])} of {int(real.sum())}) · "
                        f"bottom row: synthetic ({len(shown['synthetic'])} of {int(made.sum())})")
        overlay.visible = self._gallery_caption = True
        overlay.position = "top_center"
        overlay.font_size = 12
        overlay.color = "white"
        image = self.viewer.layers[layers[0][1]["name"]]
        self.viewer.layers.selection.active = image  # not the masks: a click must not paint on the gallery
        self.viewer.reset_view()

    def _show(self, cohort) -> None:
        """Make ``cohort`` the dock's: its summary, table and filter."""
        self.cohort = cohort
        labelled = cohort.cases["label"].map(lambda v: isinstance(v, str) and bool(v))
        splits = ", ".join(f"{k} {v}" for k, v in cohort.cases["split"].astype("string").fillna("none")
                           .value_counts().sort_index().items())
        notes = "".join(f"<br><i>{n}</i>" for n in cohort.notes[:3])
        self.info.setText(f"<b>{cohort.name}</b> ({cohort.kind}): {len(cohort)} cases ({splits}), "
                          f"{int(labelled.sum())} with ground truth; classes {format_classes(cohort.classes)}"
                          + notes)
        made = len(cohort.synthetic_ids)
        if made:
            self.info.setText(self.info.text() + f"<br><b>{len(cohort) - made} real + {made} synthetic</b> "
                              "(generated, training only; counted above)")
        self._fill_table(cohort.cases.assign(labelled=labelled, **{ORIGIN: self._origin(cohort)}))
        self.attribute_combo.blockSignals(True)
        self.attribute_combo.clear()
        self.attribute_combo.addItems([ALL, *cohort.attributes, *([ORIGIN] if made else [])])
        self.attribute_combo.blockSignals(False)
        self._on_attribute_changed(ALL)
        self.gallery_button.setEnabled(bool(made))

    def open_case(self, case_id: str) -> None:
        """Show a case's image and ground truth, replacing the previously opened case."""
        try:
            layers = case_layers(self.cohort, case_id)
        except FILE_ERRORS as exc:
            hint = (" — declare what the mask values mean under Classes (e.g. rim=1, cup=2) and Load again"
                    if "declared classes" in str(exc) else "")
            show_error(f"Cannot open case {case_id}: {user_message(exc)}{hint}")
            return
        pred_dir = self.pred_edit.text().strip()
        if pred_dir:
            path = prediction_path(self.cohort, pred_dir, case_id)
            if path.is_file():
                try:
                    case = load_image(self.cohort, case_id)
                    pred = load_prediction(self.cohort, pred_dir, case)
                    layers.append(labels_layer(pred, case.affine, f"{case_id} prediction", layers[0][1]["metadata"],
                                               role="prediction"))
                except FILE_ERRORS as exc:
                    show_error(f"Prediction of {case_id} not shown: {user_message(exc)}")
        self.case_layers = show_layers(self.viewer, self.case_layers, layers)
        if self._gallery_caption:  # the gallery's layers are gone: so is its caption
            self.viewer.text_overlay.visible = self._gallery_caption = False
        self.viewer.reset_view()
        if len(layers) > 1:  # show the slice through the middle of the ground truth (or prediction)
            focus_on(self.viewer, layers[1][0], layers[1][1]["scale"])

    def visible_case_ids(self) -> list[str]:
        return [self.table.item(r, 0).text() for r in range(self.table.rowCount()) if not self.table.isRowHidden(r)]

    # ------------------------------------------------------------------ slots
    def _on_browse_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open cohort manifest", "", "Manifest (*.csv);;All files (*)")
        if path:
            self.load(path)

    def _on_folder_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a dataset folder")
        if path:
            self.load(path)

    def _on_classes_from_model_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Classes of a checkpoint", "", "Checkpoint (*.pt);;All files (*)")
        if path:
            self.classes_from_model(path)

    def classes_from_model(self, ref: str | Path) -> None:
        """Fill the classes field from a checkpoint (a file, or ``brain`` / ``fundus``)."""
        from ..models.checkpoint import load_checkpoint
        from ..models.zoo import resolve_checkpoint

        try:
            ckpt = load_checkpoint(resolve_checkpoint(str(ref)))
        except FILE_ERRORS as exc:
            show_error(f"Cannot read the model's classes: {user_message(exc)}")
            return
        if not ckpt.classes:
            show_error(f"The checkpoint records no classes: type them instead ({Path(str(ref)).name})")
            return
        self.classes_edit.setText(format_classes(ckpt.classes))

    def _on_load_clicked(self) -> None:
        text = self.path_edit.text().strip()
        if not text:
            show_error("Give a manifest file or dataset folder first (File… or Folder…)")
            return
        self.load(text)

    def _on_attribute_changed(self, attribute: str) -> None:
        self.value_combo.blockSignals(True)
        self.value_combo.clear()
        if self.cohort is not None and attribute == ORIGIN and self.cohort.synthetic_ids:
            self.value_combo.addItems([ALL, "real", "synthetic"])
        elif self.cohort is not None and attribute in self.cohort.attributes:
            values = self.cohort.cases[attribute].astype("string").fillna("unknown").unique()
            self.value_combo.addItems([ALL, *sorted(values)])
        else:
            self.value_combo.addItem(ALL)
        self.value_combo.blockSignals(False)
        self._on_filter_changed(ALL)

    def _on_filter_changed(self, value: str) -> None:
        attribute = self.attribute_combo.currentText()
        col = self.columns.index(attribute) if attribute in self.columns else None
        for r in range(self.table.rowCount()):
            hide = col is not None and value not in (ALL, "") and self.table.item(r, col).text() != value
            self.table.setRowHidden(r, hide)

    def _on_open_clicked(self) -> None:
        rows = {i.row() for i in self.table.selectedItems()}
        if rows:
            self.open_case(self.table.item(rows.pop(), 0).text())

    # ------------------------------------------------------------------ helpers
    def _on_synthetic_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "A folder written by fairseg synthesize")
        if path:
            self.add_synthetic(path)

    @staticmethod
    def _origin(cohort) -> list[str]:
        made = set(cohort.synthetic_ids)
        return ["synthetic" if c in made else "real" for c in cohort.case_ids]

    def _default_predictions(self, cohort) -> None:
        """A new cohort: its own ``predictions`` folder when it has one, not the last cohort's."""
        src = Path(cohort.source)
        default = (src.parent if src.is_file() else src) / "predictions"
        self.pred_edit.setText(str(default) if default.is_dir() else "")

    def _clear(self, message: str) -> None:
        self.cohort, self.real_cohort, self.columns = None, None, []
        self.table.clear()
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.attribute_combo.clear()
        self.value_combo.clear()
        self.gallery_button.setEnabled(False)
        self.info.setText(message)

    def _fill_table(self, cases: pd.DataFrame) -> None:
        extra = [ORIGIN] if self.cohort.synthetic_ids else []
        self.columns = ["case_id", *extra, "split", "labelled", *self.cohort.attributes]
        self.table.setSortingEnabled(False)
        self.table.clear()
        self.table.setColumnCount(len(self.columns))
        self.table.setHorizontalHeaderLabels(["case", *extra, "split", "label", *self.cohort.attributes])
        self.table.setRowCount(len(cases))
        for r, row in enumerate(cases[self.columns].itertuples(index=False)):
            for c, v in enumerate(row):
                text = ("yes" if v else "no") if self.columns[c] == "labelled" else (
                    "unknown" if pd.isna(v) else str(v))
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.table.setSortingEnabled(True)
