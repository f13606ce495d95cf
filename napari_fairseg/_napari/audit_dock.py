"""The Fairness audit dock: per-subgroup tables, an intersectional Dice heatmap, divergent subgroups.

A thin skin over :func:`napari_fairseg.report.audit.audit_job` (the same numbers as
``fairseg audit``): choose one or two attributes and a predictions folder (the Model &
inference dock's cohort output), run the audit in the background, read ES-Dice, ES-IoU, ESSP,
Δ (and MAMA-MIA scores where computed), the per-group table with counts and bootstrap CIs, the
heatmap of mean Dice per cell with its counts, and the top divergent subgroups. Clicking a
heatmap cell lists its cases; double-clicking a case opens it with its prediction. "Export
report" writes the ``fairseg audit`` report.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import napari
import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..data.arrays import load_case, load_prediction
from ..data.attributes import bin_continuous
from ..data.layers import case_layers, cohort_of, labels_layer
from ..errors import user_message
from ..metrics.subgroups import intersection_cells, intersection_table
from ..report.audit import AuditConfig, audit_job, write_audit
from ..report.figures import draw_heatmap
from .viewer_layers import FILE_ERRORS, current_case, show_layers
from .workers import JobDock

NONE = "(none)"


class AuditDock(JobDock):
    """Audit settings, results tables, the heatmap, case drill-down and report export."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.cohort = None
        self.audit = None
        self.predictions: Path | None = None
        self.cells: dict[tuple[int, int], list[str]] = {}
        self.opened: list = []
        self._build()
        self._layout()
        self._connect()
        self._on_running_changed(False)

    def busy_widgets(self) -> list:
        return [self.run_button]

    def _on_running_changed(self, running: bool) -> None:
        super()._on_running_changed(running)
        self.export_button.setEnabled(not running and self.audit is not None)

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        self.cohort_edit = QLineEdit()
        self.cohort_edit.setPlaceholderText("cohort (default: the open case's)")
        self.pred_edit = QLineEdit()
        self.pred_edit.setPlaceholderText("predictions folder")
        self.attr_a = QComboBox()
        self.attr_b = QComboBox()
        self.split_combo = QComboBox()
        self.metric_combo = QComboBox()
        self.run_button = QPushButton("Run audit")
        self.export_button = QPushButton("Export report")
        self.summary = QLabel("Run an audit to see the fairness summary.")
        self.summary.setWordWrap(True)
        self.groups_table = QTableWidget(0, 5)
        self.groups_table.setHorizontalHeaderLabels(["group", "n", "mean", "95% CI", "small"])
        self.subgroups_table = QTableWidget(0, 4)
        self.subgroups_table.setHorizontalHeaderLabels(["subgroup", "n", "mean", "divergence"])
        for t in (self.groups_table, self.subgroups_table):
            t.setMinimumHeight(110)
            t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.figure = Figure(figsize=(3.6, 2.8), dpi=90, layout="constrained")  # labels and colour bar fit
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(230)
        self.cases_list = QListWidget()
        self.cases_list.setMaximumHeight(90)

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("Cohort", self.cohort_edit)
        form.addRow("Predictions", self.pred_edit)
        form.addRow("Attribute", self.attr_a)
        form.addRow("× attribute", self.attr_b)
        form.addRow("Split", self.split_combo)
        form.addRow("Metric", self.metric_combo)
        buttons = QHBoxLayout()
        for b in (self.run_button, self.cancel_button, self.export_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.summary)
        layout.addWidget(self.groups_table)
        layout.addWidget(self.canvas)
        layout.addSpacing(6)
        layout.addWidget(QLabel("Cases of the clicked cell (double-click opens one):"))
        layout.addWidget(self.cases_list)
        layout.addWidget(QLabel("Most divergent subgroups:"))
        layout.addWidget(self.subgroups_table)

    def _connect(self) -> None:
        self.run_button.clicked.connect(self._on_run_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.metric_combo.currentTextChanged.connect(lambda _: self._show())
        self.canvas.mpl_connect("button_press_event", self._on_heatmap_clicked)
        self.cases_list.itemDoubleClicked.connect(lambda item: self.open_case(item.text()))

    # ------------------------------------------------------------------ set-up
    def set_cohort(self, path: str | Path, *, classes: dict | None = None) -> bool:
        try:
            cohort = cohort_of({"cohort": str(path), "classes": classes})
        except FILE_ERRORS as exc:
            self._clear_results(f"Cannot open the cohort: {user_message(exc)}")
            show_error(f"Cannot open cohort: {user_message(exc)}")
            return False
        self.cohort = cohort
        self.cohort_edit.setText(str(cohort.source))
        for combo, extra in ((self.attr_a, []), (self.attr_b, [NONE])):
            keep = combo.currentText()
            combo.clear()
            combo.addItems([*extra, *cohort.attributes])
            if keep:
                combo.setCurrentText(keep)
        keep = self.split_combo.currentText()
        self.split_combo.clear()
        self.split_combo.addItems(["(all)", *sorted(cohort.cases["split"].dropna().astype(str).unique())])
        self.split_combo.setCurrentText(keep or ("test" if "test" in set(cohort.cases["split"]) else "(all)"))
        if not self.pred_edit.text().strip():
            src = Path(cohort.source)
            default = (src.parent if src.is_file() else src) / "predictions"
            if default.is_dir():
                self.pred_edit.setText(str(default))
        return True

    def _on_run_clicked(self) -> None:
        path, classes = self.cohort_edit.text().strip(), None
        found = current_case(self.viewer)
        if found is not None and (not path or path == str(found[0]["cohort"])):
            path, classes = str(found[0]["cohort"]), found[0].get("classes")  # the open case's declared classes
        if not path:
            show_error("Give a cohort, or open a case of one first")
            return
        if (self.cohort is None or str(self.cohort.source) != path) and not self.set_cohort(path, classes=classes):
            return
        preds = self.pred_edit.text().strip()
        if not preds:
            show_error("Give the predictions folder (run the Model & inference dock on the cohort first)")
            return
        attrs = [self.attr_a.currentText()] + ([self.attr_b.currentText()] if self.attr_b.currentText() != NONE
                                                and self.attr_b.currentText() != self.attr_a.currentText() else [])
        split = None if self.split_combo.currentText() == "(all)" else self.split_combo.currentText()
        config = AuditConfig(attributes=tuple(attrs), split=split, min_group_size=5, n_boot=500)
        self.predictions = Path(preds)
        self._clear_results("Auditing…")
        self.runner.start(audit_job(self.cohort, preds, config), title="fairness audit", on_done=self._on_audit_done,
                          on_error=lambda exc: self._clear_results(f"Audit failed: {user_message(exc)}"))

    def _clear_results(self, message: str) -> None:
        """Forget the shown audit (a new one starts, or it failed): no stale numbers stay on screen."""
        self.audit, self.cells = None, {}
        self.summary.setText(message)
        for table in (self.groups_table, self.subgroups_table):
            table.setRowCount(0)
        self.cases_list.clear()
        self.figure.clear()
        self.canvas.draw_idle()
        self.export_button.setEnabled(False)

    def _on_audit_done(self, audit) -> None:
        self.audit = audit
        self.export_button.setEnabled(True)
        keep = self.metric_combo.currentText()
        self.metric_combo.blockSignals(True)
        self.metric_combo.clear()
        self.metric_combo.addItems([m for m in audit.metrics if not m.startswith("normhd")])
        self.metric_combo.setCurrentText(keep if keep in audit.metrics else
                                         next((m for m in audit.metrics if m.startswith("dice")), audit.metrics[0]))
        self.metric_combo.blockSignals(False)
        self._show()

    # ------------------------------------------------------------------ results
    def _show(self) -> None:
        audit, metric = self.audit, self.metric_combo.currentText()
        if audit is None or not metric:
            return
        a = self.attr_a.currentText()
        e = audit.summary["attributes"][a]["metrics"][metric]
        name = metric.split("_", 1)[1] if "_" in metric else metric
        # cohort strings are escaped: the label renders rich text, and a group value is data
        lines = [f"<b>{escape(a)}</b>, {escape(metric)}: overall {_fmt(e['overall'])}, Δ {_fmt(e['delta'])}, "
                 f"ES (ESSP) {_fmt(e['es'])}, worst group {escape(str(e['worst_group']))}"]
        for m in (f"dice_{name}", f"iou_{name}"):
            if m in audit.summary["attributes"][a]["metrics"]:
                em = audit.summary["attributes"][a]["metrics"][m]
                lines.append(f"ES-{ {'dice': 'Dice', 'iou': 'IoU'}[m.split('_')[0]]} {_fmt(em['es'])} "
                             f"(Δ {_fmt(em['delta'])})")
        mm = audit.summary.get("mamamia", {}).get(name)
        if mm:
            lines.append(f"MAMA-MIA PS {_fmt(mm['ps'])}, FS {_fmt(mm['fs'])}, TS {_fmt(mm['ts'])}")
        self.summary.setText("<br>".join(lines))
        g = audit.groups[(audit.groups["attribute"] == a) & (audit.groups["metric"] == metric)]
        self.groups_table.setRowCount(len(g))
        for r, row in enumerate(g.itertuples(index=False)):
            vals = (row.group, row.n, _fmt(row.mean), f"{_fmt(row.ci_low)} – {_fmt(row.ci_high)}",
                    "yes" if row.small else "")
            for c, v in enumerate(vals):
                self.groups_table.setItem(r, c, QTableWidgetItem(str(v)))
        self.groups_table.resizeColumnsToContents()
        s = audit.subgroups[audit.subgroups["metric"] == metric].sort_values("divergence").head(8)
        self.subgroups_table.setRowCount(len(s))
        for r, row in enumerate(s.itertuples(index=False)):
            for c, v in enumerate((row.subgroup, row.n, _fmt(row.mean), _fmt(row.divergence))):
                self.subgroups_table.setItem(r, c, QTableWidgetItem(str(v)))
        self.subgroups_table.resizeColumnsToContents()
        self._draw_heatmap(metric)

    def _cell_tables(self, metric: str):
        """Mean and count per cell (attribute A × B, or A alone) and the case ids per cell index."""
        pc = self.audit.per_case
        a = bin_continuous(pc[self.attr_a.currentText()], name=self.attr_a.currentText())
        b_name = self.attr_b.currentText()
        b = (bin_continuous(pc[b_name], name=b_name) if b_name != NONE and b_name in pc
             else pd.Series(["all"] * len(pc)))
        mean, count = intersection_table(pc[metric].to_numpy(float), a, b)
        members = intersection_cells(pc["case_id"], a, b)
        cells = {(i, j): members.get((str(ra), str(cb)), [])
                 for i, ra in enumerate(mean.index) for j, cb in enumerate(mean.columns)}
        return mean, count, cells

    def _draw_heatmap(self, metric: str) -> None:
        mean, count, self.cells = self._cell_tables(metric)
        self.figure.clear()
        ax = self.figure.add_subplot()
        b = self.attr_b.currentText()
        im = draw_heatmap(ax, mean, count, metric=metric.split("_")[0], row_label=self.attr_a.currentText(),
                          col_label="" if b == NONE else b, min_size=5)
        bar = self.figure.colorbar(im, ax=ax, fraction=0.08, pad=0.03)
        bar.ax.tick_params(labelsize=7)
        ax.title.set_fontsize(8)
        self.canvas.draw_idle()

    def _on_heatmap_clicked(self, event) -> None:
        if event.inaxes is None or event.xdata is None or not self.cells:
            return
        key = (int(round(event.ydata)), int(round(event.xdata)))
        self.cases_list.clear()
        self.cases_list.addItems(self.cells.get(key, []))

    def open_case(self, case_id: str) -> None:
        """Open a case with its ground truth and the audited prediction."""
        try:
            layers = case_layers(self.cohort, case_id)
            case = load_case(self.cohort, case_id)
            pred = load_prediction(self.cohort, self.predictions, case)
        except FILE_ERRORS as exc:
            show_error(f"Cannot open {case_id}: {user_message(exc)}")
            return
        layers.append(labels_layer(pred, case.affine, f"{case_id} prediction", layers[0][1]["metadata"],
                                   role="prediction"))
        self.opened = show_layers(self.viewer, self.opened, layers)

    def _on_export_clicked(self) -> None:
        if self.audit is None:
            show_error("Run an audit first")
            return
        folder = QFileDialog.getExistingDirectory(self, "Write the audit report into")
        if folder:
            self.export(folder)

    def export(self, folder: str | Path) -> Path:
        paths = write_audit(self.audit, folder)
        show_info(f"Audit report written: {paths['report']}")
        return paths["report"]


def _fmt(v) -> str:
    """A number for the dock: 4 decimals, ``—`` when undefined."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    return f"{v:.4f}" if isinstance(v, float | np.floating) else str(v)
