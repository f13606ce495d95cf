"""The docks offer the choices and start on the defaults of napari_fairseg.options."""

from qtpy.QtWidgets import QComboBox

from napari_fairseg._napari.tour import DOCKS
from napari_fairseg.options import DEVICES, INFERENCE, ROUND, STRATEGIES, TRAIN, UNCERTAINTY

#: combo boxes a dock fills from what it opens (cohort attributes, splits, results, checkpoints)
FILLED_FROM_DATA = {("Cohort", "attribute_combo"), ("Cohort", "value_combo"), ("Model & inference", "model_combo"),
                    ("Fairness audit", "attr_a"), ("Fairness audit", "attr_b"), ("Fairness audit", "split_combo"),
                    ("Fairness audit", "metric_combo")}


def test_every_dock_combo_box_lists_the_options_choices_and_starts_on_the_default(make_napari_viewer, open_dock):
    viewer = make_napari_viewer()
    expected = {("Model & inference", "device_combo"): (DEVICES, INFERENCE["device"]),
                ("Model & inference", "uncertainty_combo"): (UNCERTAINTY, INFERENCE["uncertainty"]),
                ("Active learning", "strategy_combo"): (STRATEGIES, ROUND["strategy"])}
    docks, seen = {}, set()
    for name in DOCKS:
        docks[name] = dock = open_dock(viewer, name)
        for attr, widget in vars(dock).items():
            if not isinstance(widget, QComboBox) or (name, attr) in FILLED_FROM_DATA:
                continue
            # a combo box typed by hand in a dock (not read from the options) fails here
            assert (name, attr) in expected, f"{name} dock: {attr} lists choices that are not in options"
            choices, default = expected[name, attr]
            assert [widget.itemText(i) for i in range(widget.count())] == list(choices), (name, attr)
            assert widget.currentText() == default, (name, attr)
            seen.add((name, attr))
    assert seen == set(expected)

    model, active = docks["Model & inference"], docks["Active learning"]
    assert (model.passes.value(), model.train_epochs.value()) == (INFERENCE["passes"], TRAIN["epochs"])
    assert (active.batch.value(), active.epochs.value()) == (ROUND["batch"], ROUND["epochs"])
