import gc
import importlib
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# --- make mutate: the same tests, run faster --------------------------------------------------
# mutmut runs, for each mutant, every test that reaches the mutated function, in a fresh fork of
# one warmed-up process, stopping at the first failure. Two things make that cheap without
# changing what is tested: libraries the tests import lazily are imported once, in the process
# that is forked (not once per mutant), and each mutant's tests run cheapest first, so a killed
# mutant usually dies on a unit test before the slow end-to-end tests start. The costs come from
# mutmut's stats run (the whole selection, unmutated): each test's own time plus the setup time
# of the module/session fixtures it needs. Off unless FAIRSEG_MUTATION is set (the Makefile).
MUTATION = bool(os.environ.get("FAIRSEG_MUTATION"))
TEST_COSTS = "fairseg-test-costs.json"  # in mutmut's working copy (mutants/)
LAZY_IMPORTS = ("torch._dynamo", "torch._inductor", "monai.networks.nets", "monai.metrics",
                "scipy.ndimage", "scipy.stats", "scipy.io", "divexplorer", "openpyxl", "nilearn.image",
                "nilearn.datasets", "napari", "napari._qt", "napari_fairseg.report", "napari_fairseg.cli")
_shared_fixture_s: dict[str, float] = {}
_own_s: dict[str, float] = {}
_running: list[str] = []


def _mutmut_phase():
    return os.environ.get("MUTANT_UNDER_TEST", "")


if MUTATION:
    def pytest_collection_finish(session):
        for name in LAZY_IMPORTS:
            importlib.import_module(name)
        # Everything loaded so far lives as long as the process: keep it out of the collector, or
        # each mutant's pytest session spends ~1 s in gc.collect() walking torch's and napari's
        # objects (and copying the forked pages it touches).
        gc.freeze()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(fixturedef, request):
        start = time.perf_counter()
        yield
        if fixturedef.scope != "function":
            seconds = time.perf_counter() - start
            _shared_fixture_s[fixturedef.argname] = max(seconds, _shared_fixture_s.get(fixturedef.argname, 0.0))
            if _running:
                _own_s[_running[-1]] -= seconds  # counted with the fixture, not the test

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _own_s[item.nodeid] = 0.0
        _running.append(item.nodeid)
        start = time.perf_counter()
        yield
        _running.pop()
        _own_s[item.nodeid] += time.perf_counter() - start

    def pytest_sessionfinish(session):
        if _mutmut_phase() == "stats":
            path = Path(session.config.rootpath) / TEST_COSTS
            path.write_text(json.dumps({"tests": _own_s, "shared_fixtures": _shared_fixture_s}))

    def pytest_collection_modifyitems(config, items):
        path = Path(config.rootpath) / TEST_COSTS
        if _mutmut_phase() in ("", "stats") or not path.exists():
            return
        costs = json.loads(path.read_text())

        def cost(item):
            shared = sum(costs["shared_fixtures"].get(name, 0.0) for name in item.fixturenames)
            return costs["tests"].get(item.nodeid, 60.0) + shared
        items.sort(key=cost)


def blob(shape, centre, radius):
    """A boolean ball (or disc) of ``radius`` voxels."""
    grid = np.indices(shape).astype(float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return d2 <= radius ** 2


def save_nifti(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_brain(tmp_path_factory):
    """A 6-case brain cohort on a small grid (both groups, train/test splits)."""
    from napari_fairseg.data.synthetic import make_sample

    out = tmp_path_factory.mktemp("tiny_brain")
    return make_sample("brain", out, n_cases=6, seed=3, shape=(32, 32, 24), spacing=3.0)


@pytest.fixture(scope="session")
def fundus():
    """The bundled fundus sample (FairSeg npz)."""
    from pathlib import Path

    from napari_fairseg.data.readers import open_cohort

    return open_cohort(Path(__file__).resolve().parent.parent / "sample_data" / "fundus")


def write_toy_cohort(out, *, n_major=12, n_minor=3, val=(6, 2), n_target=0, size=32, seed=0):
    """A small biased 2D cohort (PNG images and masks) for training tests.

    The majority group has bright disks on a dark background, the minority group dark disks on
    a bright one, so a network trained on the pooled data learns the majority's rule first and
    fails the minority: the gap every fairness objective should narrow. ``val`` gives the
    validation cases per group (majority, minority); ``target`` cases (split ``pool``) come
    from a shifted, low-contrast domain, for pseudo-label tests. A ``site`` attribute
    alternates a/b.
    """
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    from napari_fairseg.data.manifest import Cohort

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []

    def case(i, group, split):
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.uniform(10, size - 10, 2)
        r = rng.uniform(5, 8)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        fg, bg = {"major": (0.7, 0.3), "minor": (0.3, 0.7), "target": (0.68, 0.52)}[group]
        img = np.clip(np.where(disk, fg, bg) + rng.normal(0, 0.08, disk.shape), 0, 1)
        cid = f"{group}_{split}_{i:02d}"
        Image.fromarray((img * 255).astype(np.uint8)).save(out / f"{cid}.png")
        Image.fromarray((disk * 255).astype(np.uint8)).save(out / f"{cid}_mask.png")
        rows.append({"case_id": cid, "image": str(out / f"{cid}.png"), "label": str(out / f"{cid}_mask.png"),
                     "split": split, "group": group, "site": "a" if i % 2 else "b"})

    for i in range(n_major):
        case(i, "major", "train")
    for i in range(n_minor):
        case(i, "minor", "train")
    for i in range(val[0]):
        case(i, "major", "val")
    for i in range(val[1]):
        case(i, "minor", "val")
    for i in range(n_target):
        case(i, "target", "pool")
    return Cohort(pd.DataFrame(rows), "image2d", {"disk": (1,)}, "toy", source=out)


def write_domain(out, *, domain: str, n_train=8, n_val=2, n_test=4, size=32, seed=0):
    """Discs on a noisy field, two groups; ``domain`` ``source`` (bright disc, flat dark field),
    ``target`` (the same task under a strong left-to-right intensity ramp and a dimmer disc:
    a shift that per-image normalisation does not undo) or ``inverted`` (a dark disc on a bright
    field, as T1 and T2 swap tissue brightness). Written as PNGs with a manifest."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng([seed, ("source", "target", "inverted").index(domain)])
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[:size, :size]
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        cy, cx = rng.uniform(10, size - 10, 2)
        r = rng.uniform(4, 7)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if domain == "source":
            img = np.where(disc, 0.7, 0.3)
        elif domain == "inverted":
            img = np.where(disc, 0.25, 0.75)
        else:
            img = np.where(disc, 0.55, 0.2) + 0.45 * xx / size
        img = np.clip(img + rng.normal(0, 0.05, disc.shape), 0, 1)
        cid = f"{domain}_{i:02d}"
        Image.fromarray((img * 255).astype(np.uint8)).save(out / f"{cid}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(out / f"{cid}_mask.png")
        rows.append({"case_id": cid, "image": f"{cid}.png", "label": f"{cid}_mask.png", "split": split,
                     "group": "A" if i % 2 else "B"})
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    from napari_fairseg.data.readers import open_cohort

    return open_cohort(out / "manifest.csv")


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    return write_toy_cohort(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session", autouse=True)
def _preprocessed_cache_in_tmp(tmp_path_factory):
    """Training's persistent cache of preprocessed cases goes to a temporary folder, not the
    user's cache folder (every session's tiny cohorts are new files, so new entries)."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("preprocessed")
        mp.setattr("napari_fairseg.training.data.cache_dir", lambda: folder)
        yield
