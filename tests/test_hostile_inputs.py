"""Hostile inputs (issue 10 §5): cohorts, checkpoints and files crafted to escape folders,
overwrite inputs, inject HTML or spreadsheet formulas, or exhaust memory. Each test enters
through the user's door (the ``fairseg`` CLI) where the finding came through it."""

import io
import json
import shutil
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from napari_fairseg.cli import main
from napari_fairseg.data import open_cohort, prediction_path, read_manifest
from napari_fairseg.data.arrays import read_image2d, read_nifti, read_npz_array
from napari_fairseg.data.atomic import atomic_path
from napari_fairseg.errors import InputDataError

from .conftest import save_nifti

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "fundus"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what a refused command must leave untouched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fundus_manifest(folder: Path, ids: list[str]) -> Path:
    """A FairSeg manifest over copies of the sample's first npz files, one per id given."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cid in enumerate(ids):
        src = SAMPLE / f"data_{i:05d}.npz"
        shutil.copy(src, folder / src.name)
        rows.append({"case_id": cid, "image": f"{src.name}#slo_fundus", "label": f"{src.name}#disc_cup_mask"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def nifti_cohort(root: Path, groups: dict[str, str], *, attributes: dict[str, list] | None = None,
                 classes: dict | None = None, name: str | None = None) -> tuple[Path, Path]:
    """A small NIfTI cohort (``images/`` + ``labels/``) and a predictions folder.

    ``groups`` maps case id → a value of the attribute ``group``; with ``attributes`` or
    ``classes`` or ``name`` the cohort is a manifest (``manifest.csv`` + sidecar), otherwise a
    bare folder with no metadata. Predictions equal the labels except one voxel per case.
    """
    rows = []
    for i, cid in enumerate(groups):
        img = np.random.default_rng(i).random((8, 8, 4)).astype(np.float32)
        lab = np.zeros((8, 8, 4), np.uint8)
        lab[2:6, 2:6, 1:3] = 1
        save_nifti(root / "images" / f"{cid}.nii.gz", img)
        save_nifti(root / "labels" / f"{cid}.nii.gz", lab)
        pred = lab.copy()
        pred[0, 0, i % 4] = 1
        save_nifti(root.parent / f"{root.name}-pred" / f"{cid}.nii.gz", pred)
        rows.append({"case_id": cid, "image": f"images/{cid}.nii.gz", "label": f"labels/{cid}.nii.gz"})
    cohort = root
    if attributes is not None or classes is not None or name is not None:
        table = pd.DataFrame(rows)
        table["group"] = list(groups.values())
        for col, values in (attributes or {}).items():
            table[col] = values
        table.to_csv(root / "manifest.csv", index=False)
        (root / "manifest.cohort.json").write_text(json.dumps(
            {"kind": "nifti", "name": name or "hostile", "classes": classes or {"foreground": [1]}}))
        cohort = root / "manifest.csv"
    return cohort, root.parent / f"{root.name}-pred"


# --------------------------------------------------------------------------- 1. path traversal
@pytest.mark.parametrize("bad_id", ["../../pwned", "ABSOLUTE", "a/../../pwned", "x" * 300])
def test_a_case_id_that_is_not_a_plain_file_name_stops_predict_before_anything_is_written(
        tmp_path, bad_id, capsys):
    if bad_id == "ABSOLUTE":
        bad_id = str(tmp_path / "pwned")
    manifest = fundus_manifest(tmp_path / "cohort", ["ok_1", bad_id])
    before = snapshot(tmp_path)
    rc = main(["--quiet", "predict", str(manifest), "--model", "fundus", "--out", str(tmp_path / "cohort" / "o" / "p"),
               "--device", "cpu", "--no-maps"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "manifest.csv" in err and "line 3" in err and "Traceback" not in err
    assert ("not a plain file name" in err) if len(bad_id) < 128 else ("at most 128" in err)
    assert snapshot(tmp_path) == before  # nothing written, inside or outside


def test_writers_refuse_a_path_that_resolves_outside_their_folder(tmp_path):
    # defence in depth: a case id that never passed through a Cohort still cannot climb out
    cohort = read_manifest(fundus_manifest(tmp_path / "c", ["ok_1"]))
    for cid in ("../pwned", "a/../../pwned", str(tmp_path / "pwned")):
        with pytest.raises(InputDataError, match="outside"):
            prediction_path(cohort, tmp_path / "c" / "pred", cid)
    with pytest.raises(InputDataError, match="outside"), atomic_path(tmp_path / "o" / ".." / "x.txt",
                                                                     root=tmp_path / "o") as tmp:
        tmp.write_text("never")
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "o").exists()


def test_an_attribute_name_cannot_steer_an_audit_figure_outside_the_output_folder(tmp_path, capsys):
    ids = {f"c{i}": "ab"[i % 2] for i in range(6)}
    cohort, preds = nifti_cohort(tmp_path / "a" / "b" / "ds", ids,
                                 attributes={"x/../../../../pwn": list("xyxyyx")})
    out = tmp_path / "a" / "b" / "out"
    before = snapshot(tmp_path)
    rc = main(["--quiet", "audit", str(cohort), "--predictions", str(preds), "--out", str(out), "--n-boot", "10"])
    assert rc == 0, capsys.readouterr().err
    after = snapshot(tmp_path)
    new = sorted(set(after) - set(before))
    assert new and all(Path(tmp_path / p).resolve().is_relative_to(out.resolve()) for p in new), new
    heatmaps = sorted(p.name for p in out.glob("heatmap_*.png"))
    assert len(heatmaps) == 1 and "/" not in heatmaps[0] and ".." not in heatmaps[0]


# --------------------------------------------------------------------------- 2. --out over the inputs
def test_predict_refuses_an_output_folder_that_would_overwrite_its_inputs(tmp_path, capsys):
    folder = tmp_path / "fundus"
    folder.mkdir()
    for i in range(2):
        shutil.copy(SAMPLE / f"data_{i:05d}.npz", folder)
    manifest = fundus_manifest(tmp_path / "m", ["ok_1", "ok_2"])
    before = snapshot(tmp_path)
    for cohort, out in ((folder, folder), (folder, tmp_path), (manifest, manifest.parent)):
        rc = main(["--quiet", "predict", str(cohort), "--model", "fundus", "--out", str(out), "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 2 and "would overwrite" in err and "Traceback" not in err, err
        assert snapshot(tmp_path) == before
    # an output folder beside the inputs is fine
    rc = main(["--quiet", "predict", str(folder), "--model", "fundus", "--out", str(tmp_path / "pred"),
               "--device", "cpu", "--no-maps"])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "pred").glob("*.npz")) == ["data_00000.npz",
                                                                                    "data_00001.npz"]
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("pred")} == before


# --------------------------------------------------------------------------- 3. HTML injection
def test_report_html_escapes_every_string_that_comes_from_the_cohort(tmp_path, capsys):
    evil = "<script>alert('{}')</script>"
    ids = {f"c{i}": (evil.format("group") if i % 2 else "plain") for i in range(6)}
    cohort, preds = nifti_cohort(tmp_path / "ds", ids, attributes={"<b onmouseover=x>site</b>": list("xyxyyx")},
                                 classes={evil.format("class"): [1]}, name=evil.format("name"))
    rc = main(["--quiet", "audit", str(cohort), "--predictions", str(preds), "--out", str(tmp_path / "out"),
               "--n-boot", "10", "--min-group-size", "2"])
    assert rc == 0, capsys.readouterr().err
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in html.lower() and "<b " not in html
    for what in ("group", "class", "name"):
        assert f"&lt;script&gt;alert(&#x27;{what}&#x27;)&lt;/script&gt;" in html, what


# --------------------------------------------------------------------------- 4. audit without attributes
def test_audit_of_a_nifti_folder_without_metadata_writes_a_report_of_overall_metrics(tmp_path, capsys):
    cohort, preds = nifti_cohort(tmp_path / "ds", {f"c{i}": "" for i in range(3)})
    assert open_cohort(cohort).attributes == []
    rc = main(["--quiet", "audit", str(cohort), "--predictions", str(preds), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    html = (tmp_path / "out" / "report.html").read_text()
    assert "no attributes" in html.lower() and "Fairness audit" in html
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    per_case = pd.read_csv(tmp_path / "out" / "per_case.csv")
    assert summary["attributes"] == {} and len(per_case) == 3
    assert summary["overall"]["dice_foreground"] == pytest.approx(per_case["dice_foreground"].mean())
    assert "no attributes" in captured.out


# --------------------------------------------------------------------------- 5. checkpoint structure
@pytest.mark.parametrize("payload", [
    {"config": "[1, 2]"},  # JSON of a list
    {"config": [1, 2]},  # a list itself (weights-only loading allows it)
    {"config": "__VALID__", "meta": "[]"},
    {"config": "__VALID__", "state_dict": ["not", "tensors"]},
], ids=["json-list", "list", "meta-list", "state-list"])
def test_a_checkpoint_of_the_wrong_structure_gives_a_clear_error_naming_the_file(tmp_path, payload, capsys):
    from napari_fairseg.models.zoo import bundled_checkpoint

    good = torch.load(bundled_checkpoint("fundus"), map_location="cpu", weights_only=True)
    bad = {**good, **{k: (good[k] if v == "__VALID__" else v) for k, v in payload.items()}}
    torch.save(bad, tmp_path / "bad.pt")
    manifest = fundus_manifest(tmp_path / "c", ["ok_1"])
    rc = main(["--quiet", "predict", str(manifest), "--model", str(tmp_path / "bad.pt"), "--out",
               str(tmp_path / "p"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.pt" in err and "Traceback" not in err and "AttributeError" not in err, err
    assert "checkpoint" in err and next(iter(payload.keys() - {"config"}), "config") in err
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- 6. decompression bombs
def forged_npz(path: Path, shape) -> Path:
    """An npz whose array header claims ``shape`` (uint8) but holds a few bytes of data."""
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("slo_fundus.npy", buf.getvalue() + b"\0" * 64)
    return path


def forged_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` × ``height`` grey pixels and holds one row of data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))
    return path


def forged_nifti(path: Path, shape) -> Path:
    """A NIfTI whose header claims ``shape`` (uint8) with almost no data after it."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)
    return path


@pytest.mark.parametrize("fmt", ["npz", "png", "nifti"])
def test_an_array_larger_than_the_voxel_limit_is_refused_from_its_header(tmp_path, fmt, monkeypatch):
    monkeypatch.delenv("FAIRSEG_MAX_VOXELS", raising=False)
    if fmt == "npz":  # the default limit (2**28) refuses 20000² from a file of a few hundred bytes
        path, read, shape = forged_npz(tmp_path / "bomb.npz", (20000, 20000)), read_npz_array, "(20000, 20000)"
        limit = "268435456"
    elif fmt == "nifti":
        path, read, shape = forged_nifti(tmp_path / "bomb.nii", (20000, 20000, 1)), read_nifti, "(20000, 20000, 1)"
        limit = "268435456"
    else:  # the example, 12000², under a lowered limit
        monkeypatch.setenv("FAIRSEG_MAX_VOXELS", "100000000")
        path, read, shape, limit = forged_png(tmp_path / "bomb.png", 12000, 12000), read_image2d, "(12000, 12000)", \
            "100000000"
    tracemalloc.start()
    try:
        with pytest.raises(InputDataError) as info:
            read(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert "bomb" in msg and shape in msg and limit in msg and "FAIRSEG_MAX_VOXELS" in msg, msg
    assert peak < 32 * 2**20  # refused from the header: nothing near the claimed size was allocated


def test_predict_on_a_cohort_holding_a_decompression_bomb_exits_with_a_clear_error(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    shutil.copy(SAMPLE / "data_00000.npz", tmp_path / "c")
    forged_npz(tmp_path / "c" / "data_00001.npz", (20000, 20000))
    rc = main(["--quiet", "predict", str(tmp_path / "c"), "--model", "fundus", "--out", str(tmp_path / "p"),
               "--device", "cpu", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "data_00001.npz" in err and "FAIRSEG_MAX_VOXELS" in err and "Traceback" not in err


# --------------------------------------------------------------------------- 7. CSV formula injection
def test_csv_outputs_neutralise_formula_cells_but_keep_numbers_numeric(tmp_path, capsys):
    formulas = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)"]
    ids = {f"c{i}": formulas[i % 4] for i in range(8)}
    cohort, preds = nifti_cohort(tmp_path / "ds", ids, attributes={"score": [-1.5, 2.0, -3.25, 4.0] * 2,
                                                                   "=cmd": list("ababab-b")})
    out = tmp_path / "out"
    rc = main(["--quiet", "audit", str(cohort), "--predictions", str(preds), "--out", str(out), "--n-boot", "10",
               "--min-group-size", "2"])
    assert rc == 0, capsys.readouterr().err
    per_case = pd.read_csv(out / "per_case.csv")
    assert sorted(per_case["group"].unique()) == sorted("'" + f for f in formulas)
    assert per_case["score"].dtype == float and per_case["score"].tolist() == [-1.5, 2.0, -3.25, 4.0] * 2
    assert "'=cmd" in per_case.columns and "-" in set(per_case["'=cmd"])  # a lone '-' is no formula
    groups = pd.read_csv(out / "groups.csv")
    assert not groups["group"].astype(str).str.match(r"^[=+@]|^-\D").any()
    for csv in out.glob("*.csv"):
        for line in csv.read_text().splitlines():
            for cell in line.split(","):
                assert not cell.strip('"').startswith(("=", "+", "@")), (csv.name, cell)
    # a manifest written by the package reads back with the original values
    from napari_fairseg.data import write_manifest

    c = open_cohort(cohort)
    written = write_manifest(c, tmp_path / "copy" / "manifest.csv")
    assert "'=HYPERLINK" in written.read_text()
    back = read_manifest(written)
    assert back.cases["group"].tolist() == c.cases["group"].tolist()
    assert back.cases["score"].tolist() == [-1.5, 2.0, -3.25, 4.0] * 2


def test_an_npz_entry_whose_header_declares_a_giant_element_is_refused_unread(tmp_path):
    """A 'scalar' of dtype |V150000000 costs 150 MB to read from a file of a few kB: refused from
    its header by the folder reader and the napari reader alike."""
    import io
    import tracemalloc
    import zipfile

    from napari_fairseg._reader import read
    from napari_fairseg.data.readers import open_cohort

    folder = tmp_path / "fairseg"
    folder.mkdir()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|V150000000", "fortran_order": False, "shape": ()})
    image = io.BytesIO()
    np.save(image, np.zeros((8, 8), np.float32))
    with zipfile.ZipFile(folder / "data_00000.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("slo_fundus.npy", image.getvalue())
        z.writestr("age.npy", header.getvalue() + b"\0" * 4096)
    assert (folder / "data_00000.npz").stat().st_size < 20_000
    tracemalloc.start()
    for attempt in (lambda: open_cohort(folder), lambda: read(str(folder / "data_00000.npz"))):
        with pytest.raises(InputDataError, match="not plain numbers"):
            attempt()
    assert tracemalloc.get_traced_memory()[1] < 32 * 2**20
    tracemalloc.stop()


# --------------------------------------------------------------------------- second round (an attacker's report)
def test_a_project_inside_the_folder_it_labels_is_refused(tmp_path, capsys):
    folder = tmp_path / "fundus"
    folder.mkdir()
    for i in range(3):
        shutil.copy(SAMPLE / f"data_{i:05d}.npz", folder)
    (folder / "Test").mkdir()
    shutil.copy(SAMPLE / "data_00003.npz", folder / "Test")
    before = snapshot(folder)
    for root in (folder, folder / "Test"):  # the cohort's folder, a folder holding its files
        assert main(["--quiet", "project", "init", str(root), "--cohort", str(folder)]) == 2
        err = capsys.readouterr().err
        assert "cohort's own folder" in err or "would overwrite the inputs" in err, err
    assert snapshot(folder) == before and len(open_cohort(folder)) == 4
    assert main(["--quiet", "project", "init", str(folder / "project"), "--cohort", str(folder)]) == 0
    assert len(open_cohort(folder)) == 4  # the project's own folder is not read as cases


def test_an_audit_report_never_lands_on_the_predictions_it_audits(tmp_path, capsys):
    cohort, preds = nifti_cohort(tmp_path / "ds", {f"c{i}": "ab"[i % 2] for i in range(4)})
    before = snapshot(preds)
    assert main(["--quiet", "audit", str(cohort), "--predictions", str(preds), "--out", str(preds)]) == 2
    assert "would overwrite" in capsys.readouterr().err and snapshot(preds) == before


def test_annotation_rows_pointing_outside_the_project_are_never_read_or_exported(tmp_path, capsys):
    import sqlite3

    from napari_fairseg.active import Project
    from napari_fairseg.data.arrays import load_case

    cohort, _ = nifti_cohort(tmp_path / "ds", {f"c{i}": "ab"[i % 2] for i in range(4)}, attributes={})
    proj = tmp_path / "p"
    with Project.create(proj, open_cohort(cohort)) as p:
        p.save_annotation("c0", load_case(p.cohort, "c0").label, author="ana")
    outside = tmp_path / "ds" / "labels" / "c1.nii.gz"
    from napari_fairseg.active.project import sha256_file

    with sqlite3.connect(proj / "project.sqlite") as db:
        for cid, path in (("c1", str(outside)), ("c2", "annotations/../../ds/labels/c2.nii.gz")):
            db.execute("INSERT INTO annotations (case_id, version, path, sha256, author, source, created) "
                       "VALUES (?, 1, ?, ?, 'x', 'human', 'now')",
                       (cid, path, sha256_file(tmp_path / "ds" / "labels" / f"{cid}.nii.gz")))
    with Project.open(proj) as p:
        bad = p.verify()
        assert sorted(bad["case_id"]) == ["c1", "c2"] and set(bad["problem"]) == {"outside the project"}
    assert main(["--quiet", "project", "export", str(proj), "--out", str(tmp_path / "exp")]) == 2
    assert not (tmp_path / "exp" / "labels").exists()


def test_cohort_text_cannot_break_figures_or_drive_the_terminal(tmp_path, capsys):
    ids = {f"c{i}": ("$\\foo{$" if i % 2 else "\x1b[31mRED\x1b]0;PWNED\x07\u202e") for i in range(6)}
    cohort, preds = nifti_cohort(tmp_path / "ds", ids, attributes={"site": list("xyxyyx")})
    rc = main(["--quiet", "audit", str(cohort), "--predictions", str(preds), "--out", str(tmp_path / "out"),
               "--n-boot", "10", "--min-group-size", "2", "--attributes", "group,site"])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "out" / "report.html").is_file()  # mathtext in a group value drew
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out


def test_an_attribute_with_no_known_value_audits_without_a_crash(tmp_path, capsys):
    cohort, preds = nifti_cohort(tmp_path / "ds", {f"c{i}": "a" for i in range(4)})
    pd.DataFrame({"id": ["zz1", "zz2"], "sex": ["F", "M"]}).to_csv(tmp_path / "meta.csv", index=False)
    rc = main(["--quiet", "audit", str(cohort), "--predictions", str(preds), "--out", str(tmp_path / "out"),
               "--metadata", str(tmp_path / "meta.csv"), "--attributes", "sex", "--n-boot", "10"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "report.html").is_file()


def test_outputs_are_never_written_through_links_or_onto_files(tmp_path, capsys):
    from napari_fairseg.data.atomic import OUTPUT_MARKER, mark_output

    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).symlink_to(tmp_path / "EVIL_CREATED")  # a dangling link
    mark_output(out)
    assert not (tmp_path / "EVIL_CREATED").exists()
    cohort, preds = nifti_cohort(tmp_path / "ds", {f"c{i}": "ab"[i % 2] for i in range(4)})
    (tmp_path / "a-file").write_text("keep")
    assert main(["--quiet", "predict", str(cohort), "--model", "brain", "--out", str(tmp_path / "a-file")]) == 2
    assert "error" in capsys.readouterr().err and (tmp_path / "a-file").read_text() == "keep"


def test_hidden_files_a_mac_leaves_beside_each_file_are_skipped(tmp_path):
    folder = tmp_path / "fundus"
    folder.mkdir()
    for i in range(2):
        shutil.copy(SAMPLE / f"data_{i:05d}.npz", folder)
        (folder / f"._data_{i:05d}.npz").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    assert sorted(open_cohort(folder).case_ids) == ["data_00000", "data_00001"]
    nif, _ = nifti_cohort(tmp_path / "ds", {"c0": "a", "c1": "b"})
    (nif / "images" / "._c0.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    assert sorted(open_cohort(nif).case_ids) == ["c0", "c1"]


def test_project_writes_never_follow_links_out_of_the_project_or_the_export(tmp_path):
    from napari_fairseg.active import Project
    from napari_fairseg.data.arrays import load_case

    cohort, _ = nifti_cohort(tmp_path / "ds", {f"c{i}": "ab"[i % 2] for i in range(4)}, attributes={})
    outside = tmp_path / "outside"
    outside.mkdir()
    with Project.create(tmp_path / "p", open_cohort(cohort)) as p:
        (p.root / "annotations").mkdir(exist_ok=True)
        (p.root / "annotations" / "c1").symlink_to(outside)
        with pytest.raises(InputDataError, match="link or leads outside"):
            p.save_annotation("c1", load_case(p.cohort, "c1").label, author="ana")
        p.save_annotation("c0", load_case(p.cohort, "c0").label, author="ana")
        exp = tmp_path / "exp"
        exp.mkdir()
        (exp / "labels").symlink_to(outside)
        with pytest.raises(InputDataError, match="outside"):
            p.export(exp)
    assert not any(outside.iterdir())


@pytest.mark.parametrize("change", [{"patch_size": [512, 512, 512]}, {"features": [3000, 6000]},
                                    {"features": [-8, 16]}, {"in_channels": 10**6}])
def test_a_checkpoint_config_asking_for_gigabytes_is_refused_before_building(tmp_path, change):
    from napari_fairseg.models.checkpoint import load_checkpoint
    from napari_fairseg.models.zoo import bundled_checkpoint

    raw = torch.load(bundled_checkpoint("brain"), weights_only=True)
    raw["config"] = json.dumps({**json.loads(raw["config"]), **change})
    torch.save(raw, tmp_path / "greedy.pt")
    tracemalloc.start()
    with pytest.raises(InputDataError, match="greedy.pt.*config"):
        load_checkpoint(tmp_path / "greedy.pt")
    assert tracemalloc.get_traced_memory()[1] < 64 * 2**20
    tracemalloc.stop()
