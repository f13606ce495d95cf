"""npe2 sample data (File › Open Sample › napari-fairseg): one case of each sample cohort.

The brain sample is generated into the sample cache on first use (about 20 s, seed 0, as
``fairseg demo``); the fundus sample ships in ``sample_data/fundus``.
"""

from __future__ import annotations

from pathlib import Path

from .data.layers import LayerData, case_layers


def _first_test_case(cohort) -> str:
    test = cohort.cases.loc[cohort.cases["split"] == "test", "case_id"]
    return test.iloc[0] if len(test) else cohort.case_ids[0]


def brain() -> list[LayerData]:
    """A T1 volume of the synthetic brain cohort with its left-caudate ground truth."""
    from .data.readers import open_cohort
    from .data.synthetic import cache_dir, make_sample

    where = cache_dir() / "brain-strong-seed0-ndefault"
    if not (where / "manifest.csv").is_file():
        make_sample("brain", where, seed=0)
    cohort = open_cohort(where / "manifest.csv")
    return case_layers(cohort, _first_test_case(cohort))


def fundus() -> list[LayerData]:
    """An SLO fundus image of the bundled FairSeg-format sample with its disc/cup mask."""
    from .data.readers import open_cohort

    cohort = open_cohort(Path(__file__).resolve().parent.parent / "sample_data" / "fundus")
    return case_layers(cohort, _first_test_case(cohort))
