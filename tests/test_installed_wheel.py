"""The plugin as napari's plugin manager installs it: from a built wheel, away from the source tree.

The wheel is built from this checkout and unpacked into a folder of its own; a fresh Python
process with only that folder ahead of the test environment's dependencies (and its working
directory outside the checkout) opens the samples from File › Open Sample, every dock from
Plugins › FairSeg, the bundled models, and ``python -m napari_fairseg.cli``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import napari, napari_fairseg
    here = Path(sys.argv[1]).resolve()
    assert Path(napari_fairseg.__file__).resolve().is_relative_to(here), napari_fairseg.__file__
    from napari_fairseg.models.zoo import bundled_checkpoint
    assert all(Path(bundled_checkpoint(k)).resolve().is_relative_to(here) for k in ("brain", "fundus"))
    viewer = napari.Viewer(show=False)
    fundus = viewer.open_sample("napari-fairseg", "fundus")
    print("fundus", [la.name for la in fundus], fundus[0].data.shape)
    for name in ("Cohort", "Model & inference", "Active learning", "Fairness audit"):
        _, widget = viewer.window.add_plugin_dock_widget("napari-fairseg", name)
        print("dock", name, type(widget).__name__)
    viewer.close()
""")


@pytest.mark.slow
def test_the_wheel_works_without_the_source_tree(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    [wheel] = wheels.glob("napari_fairseg-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "FAIRSEG_CACHE": str(tmp_path / "cache")}
    away = tmp_path / "elsewhere"
    away.mkdir()
    probe = subprocess.run([sys.executable, "-c", PROBE, str(site)], env=env, cwd=away, capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    fundus_line = next(line for line in probe.stdout.splitlines() if line.startswith("fundus "))
    assert "ground truth" in fundus_line  # the image and its disc/cup mask
    assert probe.stdout.count("dock ") == 4
    assert (tmp_path / "cache" / "fundus-fairseg-seed0-ndefault").is_dir()  # generated, not read from the checkout
    cli = subprocess.run([sys.executable, "-m", "napari_fairseg.cli", "--help"], env=env, cwd=away,
                         capture_output=True, text=True)
    assert cli.returncode == 0 and "usage: fairseg" in cli.stdout
