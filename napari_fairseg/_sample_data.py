"""npe2 sample data (File › Open Sample › napari-fairseg): one case of each sample cohort.

Both samples are generated into the sample cache on first use (seed 0; brain about 10 s,
fundus a few seconds), so the plugin installed from a wheel needs no source tree; the fundus
sample equals the one kept in the repository's ``sample_data/fundus``.
"""

from __future__ import annotations

from .data.layers import LayerData, case_layers


def _first_test_case(cohort) -> str:
    test = cohort.cases.loc[cohort.cases["split"] == "test", "case_id"]
    return test.iloc[0] if len(test) else cohort.case_ids[0]


def _sample(kind: str) -> list[LayerData]:
    from .data.synthetic import sample_cohort

    cohort = sample_cohort(kind)
    return case_layers(cohort, _first_test_case(cohort))


def brain() -> list[LayerData]:
    """A T1 volume of the synthetic brain cohort with its left-caudate ground truth."""
    return _sample("brain")


def fundus() -> list[LayerData]:
    """An SLO fundus image of the synthetic FairSeg-format sample with its disc/cup mask."""
    return _sample("fundus")
