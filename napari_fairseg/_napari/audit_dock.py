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

from pathlib import Path

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
from ..data.layers import case_layers, labels_layer
from ..data.readers import open_cohort
from ..errors import FairSegError
from ..metrics.subgroups import intersection_table
from ..report.audit import AuditConfig, audit_job, write_audit
from ..report.figures import draw_heatmap
from .inference_dock import current_case
from .workers import JobDock, show_layers

NONE = "(none)"


class AuditDock(JobDock):
    """Audit settings, results tables, the heatmap, case drill-down and report export."""

    def __init__(self, viewer):
        super().__init__(on_state=self._on_running_changed)
        self.viewer = viewer
        self.cohort = None
        self.audit = None
        self.predictions: Path | None = None
        self.cells: dict[tuple[int, int], list[str]] = {}
        self.opened: list = []

        self.cohort_edit = QLineEdit()
        self.cohort_edit.setPlaceholderText("cohort (default: the open case's)")
        self.pred_edit = QLineEdit()
        self.pred_edit.setPlaceholderText("predictions folder")
        self.attr_a = QComboBox()
        self.attr_b = QComboBox()
        self.split_combo = QComboBox()
        self.metric_combo = QComboBox()
        self.run_button = QPushButton("Run audit")
        self.cancel_button = QPushButton("Cancel")
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
        self.figure = Figure(figsize=(3.6, 2.8), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(230)
        self.cases_list = QListWidget()
        self.cases_list.setMaximumHeight(90)

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

        self.run_button.clicked.connect(self._on_run_clicked)
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.metric_combo.currentTextChanged.connect(lambda _: self._show())
        self.canvas.mpl_connect("button_press_event", self._on_heatmap_clicked)
        self.cases_list.itemDoubleClicked.connect(lambda item: self.open_case(item.text()))
        self._on_running_changed(False)

    # ------------------------------------------------------------------ set-up
    def set_cohort(self, path: str | Path) -> bool:
        try:
            cohort = open_cohort(path)
        except (FairSegError, OSError, ValueError) as exc:
            show_error(f"Cannot open cohort: {exc}")
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
        self.split_combo.addItems(["(all)", *sorted(cohort.cases["split"].astype(str).unique())])
        self.split_combo.setCurrentText(keep or ("test" if "test" in set(cohort.cases["split"]) else "(all)"))
        if not self.pred_edit.text().strip():
            src = Path(cohort.source)
            default = (src.parent if src.is_file() else src) / "predictions"
            if default.is_dir():
                self.pred_edit.setText(str(default))
        return True

    def _on_run_clicked(self) -> None:
        path = self.cohort_edit.text().strip()
        if not path:
            found = current_case(self.viewer)
            if found is None:
                show_error("Give a cohort, or open a case of one first")
                return
            path = found[0]
        if (self.cohort is None or str(self.cohort.source) != path) and not self.set_cohort(path):
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
        self.summary.setText("Auditing…")
        self.runner.start(audit_job(self.cohort, preds, config), title="fairness audit", on_done=self._on_audit_done)

    def _on_audit_done(self, audit) -> None:
        self.audit = audit
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
        lines = [f"<b>{a}</b>, {metric}: overall {e['overall']:.4f}, Δ {e['delta']:.4f}, "
                 f"ES (ESSP) {e['es']:.4f}, worst group {e['worst_group']}"]
        for m in (f"dice_{name}", f"iou_{name}"):
            if m in audit.summary["attributes"][a]["metrics"]:
                em = audit.summary["attributes"][a]["metrics"][m]
                lines.append(f"ES-{ {'dice': 'Dice', 'iou': 'IoU'}[m.split('_')[0]]} {em['es']:.4f} "
                             f"(Δ {em['delta']:.4f})")
        mm = audit.summary.get("mamamia", {}).get(name)
        if mm:
            lines.append(f"MAMA-MIA PS {mm['ps']:.4f}, FS {mm['fs']:.4f}, TS {mm['ts']:.4f}")
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
        """Mean and count per cell (attribute A × B, or A alone) and the case ids per cell."""
        pc = self.audit.per_case
        a = bin_continuous(pc[self.attr_a.currentText()], name=self.attr_a.currentText())
        b_name = self.attr_b.currentText()
        b = (bin_continuous(pc[b_name], name=b_name) if b_name != NONE and b_name in pc
             else pd.Series(["all"] * len(pc)))
        mean, count = intersection_table(pc[metric].to_numpy(float), a, b, min_size=5)
        a_s, b_s = a.astype("string").fillna("unknown"), pd.Series(b).astype("string").fillna("unknown")
        cells = {}
        for i, ra in enumerate(mean.index):
            for j, cb in enumerate(mean.columns):
                cells[(i, j)] = pc.loc[(a_s == ra).to_numpy() & (b_s == cb).to_numpy(), "case_id"].tolist()
        return mean, count, cells

    def _draw_heatmap(self, metric: str) -> None:
        mean, count, self.cells = self._cell_tables(metric)
        self.figure.clear()
        ax = self.figure.add_subplot()
        b = self.attr_b.currentText()
        draw_heatmap(ax, mean, count, metric=metric.split("_")[0], row_label=self.attr_a.currentText(),
                     col_label="" if b == NONE else b, min_size=5)
        ax.title.set_fontsize(8)
        self.figure.tight_layout()
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
        except (FairSegError, OSError, ValueError) as exc:
            show_error(f"Cannot open {case_id}: {exc}")
            return
        layers.append(labels_layer(pred, case.affine, f"{case_id} prediction", layers[0][1]["metadata"]))
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

    def _on_running_changed(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.export_button.setEnabled(not running)



def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}" if isinstance(v, float) else str(v)
