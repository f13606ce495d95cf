"""Attribute code tables and normalisations of the public datasets (METHODS.md §4, §2).

Every decoder reports what it found: an unexpected code is an :class:`InputDataError` naming
the file, the attribute and the value, never a silent guess. Unknown values become ``None``
(missing in pandas), which the fairness summaries count in ``overall`` but not as a group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputDataError

UNKNOWN_CODE = -1

#: Harvard-FairSeg README codes. ``-1`` is unknown for every attribute.
FAIRSEG_CODES: dict[str, dict[int, str]] = {
    "gender": {0: "Female", 1: "Male"},
    "race": {0: "Asian", 1: "Black", 2: "White"},
    "ethnicity": {0: "Non-Hispanic", 1: "Hispanic"},
    "language": {0: "English", 1: "Spanish", 2: "Other"},
    "maritalstatus": {
        0: "Married/Partnered",
        1: "Single",
        2: "Divorced",
        3: "Widowed",
        4: "Legally separated",
    },
}
#: Raw race codes that some Harvard-FairSeg code paths remap ({2: 0, 3: 1, 7: 2}).
FAIRSEG_RAW_RACE = {2: "Asian", 3: "Black", 7: "White"}
#: Key aliases: the README and the code disagree; ``hispanic`` is read as ``ethnicity``.
FAIRSEG_ATTRIBUTE_KEYS = {
    "age": ("age",),
    "gender": ("gender",),
    "race": ("race",),
    "ethnicity": ("ethnicity", "hispanic"),
    "language": ("language",),
    "maritalstatus": ("maritalstatus",),
}

#: MAMA-MIA official age bins: (0,40], (40,50], (50,60], (60,70], >70.
MAMAMIA_AGE_EDGES = (0, 40, 50, 60, 70, np.inf)
MAMAMIA_AGE_LABELS = ("0-40", "41-50", "51-60", "61-70", "71+")


def detect_race_coding(codes: set[int]) -> str:
    """Return ``"readme"`` ({0, 1, 2}) or ``"raw"`` ({2, 3, 7}) for a dataset's race codes.

    Codes 3 or 7 can only be raw codes; otherwise the README coding is assumed.
    Any other code raises (the caller adds the file name).
    """
    known = codes - {UNKNOWN_CODE}
    if known & {3, 7}:
        if not known <= set(FAIRSEG_RAW_RACE):
            bad = sorted(known - set(FAIRSEG_RAW_RACE))
            raise InputDataError(None, f"race codes {bad} fit neither the README coding "
                                 "{0,1,2} nor the raw coding {2,3,7}")
        return "raw"
    return "readme"


def decode_fairseg_code(attribute: str, value, *, source, race_coding: str = "readme"):
    """Decode one Harvard-FairSeg attribute code to its label (``None`` for unknown).

    Parameters
    ----------
    attribute : str
        Canonical attribute name (a key of :data:`FAIRSEG_CODES`).
    value : int-like
        The code stored in the file.
    source : str or Path
        The file, named in the error if the code is unexpected.
    race_coding : {"readme", "raw"}
        Which race table applies (see :func:`detect_race_coding`).
    """
    try:
        code = int(value)
    except (TypeError, ValueError):
        raise InputDataError(source, f"attribute {attribute!r} has a non-integer code {value!r}") from None
    if code != value and not (isinstance(value, float) and float(code) == value):
        raise InputDataError(source, f"attribute {attribute!r} has a non-integer code {value!r}")
    if code == UNKNOWN_CODE:
        return None
    table = FAIRSEG_RAW_RACE if (attribute == "race" and race_coding == "raw") else FAIRSEG_CODES[attribute]
    if code not in table:
        allowed = ", ".join(f"{k}={v}" for k, v in table.items())
        raise InputDataError(
            source, f"attribute {attribute!r} has unknown code {code} (expected -1=unknown, {allowed})"
        )
    return table[code]


def age_in_years(ages: np.ndarray) -> tuple[np.ndarray, str]:
    """Return ages in years and the unit detected (``"years"`` or ``"days"``).

    Harvard-FairSeg stores age in days in some releases: a median above 150 can only be days.
    """
    ages = np.asarray(ages, dtype=float)
    finite = ages[np.isfinite(ages)]
    if finite.size and np.median(finite) > 150:
        return ages / 365.25, "days"
    return ages, "years"


def mamamia_age_group(age: pd.Series) -> pd.Series:
    """Bin ages with the official MAMA-MIA bins ('0-40', '41-50', '51-60', '61-70', '71+').

    Ages above 100 fall in '71+' (the official scorer's last edge is 100, which drops them).
    """
    return pd.cut(pd.to_numeric(age, errors="coerce"), bins=list(MAMAMIA_AGE_EDGES),
                  labels=list(MAMAMIA_AGE_LABELS)).astype("string")


def normalise_menopause(status: pd.Series) -> pd.Series:
    """Normalise menopausal status exactly as the MAMA-MIA scorer does.

    Missing → 'unknown'; containing 'peri' → 'pre'; containing 'post' → 'post';
    containing 'pre' → 'pre'; anything else is kept as it is.
    """

    def one(x):
        if x is None or (isinstance(x, float) and np.isnan(x)) or x is pd.NA:
            return "unknown"
        x = str(x)
        if "peri" in x:
            x = "pre"
        if "post" in x:
            x = "post"
        if "pre" in x:
            x = "pre"
        return x

    return status.map(one).astype("string")


def bin_continuous(values: pd.Series, *, name: str = "", max_levels: int = 8) -> pd.Series:
    """Make an attribute discrete for group tables and subgroup discovery.

    A numeric ``age`` always uses the MAMA-MIA bins. Non-numeric attributes and numeric ones
    with at most ``max_levels`` distinct values are returned as strings; other numeric
    attributes are split into quartiles labelled by their ranges. Missing stays missing.
    """
    numeric = pd.to_numeric(values, errors="coerce")
    is_numeric = numeric.notna().sum() == values.notna().sum() and values.notna().any()
    if is_numeric and name.lower() == "age":
        return mamamia_age_group(numeric)
    if not is_numeric or numeric.nunique() <= max_levels:
        out = values.astype("string")
        if is_numeric:  # 1.0 and 1 are the same level
            out = numeric.map(lambda v: None if pd.isna(v) else f"{v:g}").astype("string")
        return out
    binned = pd.qcut(numeric, q=4, duplicates="drop")
    return binned.map(lambda iv: None if pd.isna(iv) else f"{iv.left:.3g}-{iv.right:.3g}").astype("string")
