"""One description per cohort kind: how its cases are stored, read, written and named.

A cohort's ``kind`` (``Cohort.kind``) is a key of :data:`KIND`. Every place that loads, saves or
names a case, or picks a model for it, asks the kind's :class:`CohortKind` instead of spelling kind
names, so a new dataset whose files are in a known :class:`Storage` is one entry in :data:`KIND`,
for example ``"ct": CohortKind("ct", NIFTI, 3, "folder", {"liver": (1,)}, "brain")``.

(A new folder layout also needs its reader function in :mod:`.readers`, named by ``reader``;
a new file format needs its load / save branch in :mod:`.arrays`.)

This module imports nothing beyond the standard library: the CLI, the docks and the configs may
read it without loading numpy, torch or napari.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Readers (in :mod:`.readers`) that turn a folder of some layout into a cohort.
READERS = ("folder", "npz", "mamamia")
#: File formats :mod:`.arrays` reads and writes.
FORMATS = ("nifti", "npz", "image")
#: Regions a default preprocessing pipeline crops to (``Pipeline.crop``).
CROPS = ("foreground", "box", "none")


@dataclass(frozen=True)
class Storage:
    """A file format of a kind's images, labels, predictions and maps.

    Attributes
    ----------
    name : str
        ``nifti``, ``npz`` or ``image`` (PNG / JPEG / TIFF / BMP): which branch of
        :mod:`.arrays` reads and writes it.
    suffixes : tuple of str
        Lower-case file suffixes of the format, in the order an existing prediction is looked up
        (:func:`~.arrays.prediction_path`).
    write_suffix : str
        The suffix of the files napari-fairseg writes (predictions, exported annotations).
    keyed : bool
        The arrays live under a key inside the file, referenced as ``file.npz#key``.
    affine : bool
        The file carries a voxel → world matrix, so spacings are physical (mm); files without
        one get unit (pixel) spacing and an identity affine.
    """

    name: str
    suffixes: tuple[str, ...]
    write_suffix: str
    keyed: bool = False
    affine: bool = False

    def __post_init__(self):
        if self.name not in FORMATS:
            raise ValueError(f"storage name must be one of {FORMATS}, got {self.name!r}")
        if self.write_suffix not in self.suffixes:
            raise ValueError(f"storage {self.name!r}: write suffix {self.write_suffix!r} is not one of its "
                             f"suffixes {self.suffixes}")


#: ``.nii`` is looked up before ``.nii.gz``: a prediction a person saved uncompressed is found.
NIFTI = Storage("nifti", (".nii", ".nii.gz"), ".nii.gz", affine=True)
NPZ = Storage("npz", (".npz",), ".npz", keyed=True)
IMAGE = Storage("image", (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"), ".png")

#: Harvard-FairSeg mask codes → class values (rim −1 → 1, cup −2 → 2).
FAIRSEG_MASK_CODES = MappingProxyType({0: 0, -1: 1, -2: 2})
#: Class definitions: class name → label values that make up the class.
FUNDUS_CLASSES = MappingProxyType({"cup": (2,), "rim": (1,), "disc": (1, 2)})
BINARY_CLASSES = MappingProxyType({"foreground": (1,)})


@dataclass(frozen=True)
class CohortKind:
    """What napari-fairseg needs to know about one kind of cohort.

    Attributes
    ----------
    name : str
        The kind's key in :data:`KIND` (``Cohort.kind``, the sidecar's ``kind``).
    storage : Storage
        File format of its images, labels and predictions.
    spatial_dims : int
        2 or 3: the number of spatial axes of an image, ``(C, *spatial)``.
    reader : str
        One of :data:`READERS`: the reader in :mod:`.readers` that opens a folder of this kind.
    default_classes : mapping of str to tuple of int
        Class definitions used when a cohort does not state its own.
    sample : str
        The bundled model (a key of :data:`napari_fairseg.models.zoo.BUNDLED`) the docks pick for
        a case of this kind.
    label_codes : mapping of int to int
        The dataset's own label codes → class values (FairSeg: 0, −1 rim, −2 cup). Masks that
        use them are decoded on reading and written back in them; a mask that mixes them with
        other values is refused. Empty: labels hold class values.
    mask_255 : bool
        Masks stored as 0 / 255 (8-bit images) read as 0 / 1.
    modalities : tuple of str
        For the ``npz`` reader: the image modalities the files may hold (``slo``, ``oct``); a kind
        with one modality always reads that one.
    crop : str
        One of :data:`CROPS`: the region a default preprocessing pipeline crops to (MAMA-MIA: the
        breast bounding box of its patient-info files; otherwise the foreground).
    description : str
        One line for people.
    """

    name: str
    storage: Storage
    spatial_dims: int
    reader: str
    default_classes: Mapping[str, tuple[int, ...]]
    sample: str
    label_codes: Mapping[int, int] = field(default_factory=dict)
    mask_255: bool = False
    modalities: tuple[str, ...] = ()
    crop: str = "foreground"
    description: str = ""

    def __post_init__(self):
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"kind {self.name!r}: spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if self.reader not in READERS:
            raise ValueError(f"kind {self.name!r}: reader must be one of {READERS}, got {self.reader!r}")
        if self.crop not in CROPS:
            raise ValueError(f"kind {self.name!r}: crop must be one of {CROPS}, got {self.crop!r}")
        if self.reader == "npz" and not self.modalities:
            raise ValueError(f"kind {self.name!r}: the npz reader needs at least one modality")
        if not self.default_classes:
            raise ValueError(f"kind {self.name!r}: default_classes is empty")
        # read-only copies: a frozen description cannot be changed through its mappings either
        object.__setattr__(self, "default_classes", MappingProxyType(
            {str(k): tuple(int(v) for v in vals) for k, vals in self.default_classes.items()}))
        object.__setattr__(self, "label_codes", MappingProxyType(
            {int(k): int(v) for k, v in self.label_codes.items()}))

    @property
    def physical(self) -> bool:
        """Spacings are in mm (from the files' affines); otherwise in pixels."""
        return self.storage.affine

    @property
    def nifti_maps(self) -> bool:
        """Uncertainty maps are written one NIfTI file per map with the image's affine; otherwise
        all maps of a case go into one ``.npz``."""
        return self.storage.name == "nifti"

    @property
    def coded(self) -> frozenset[int]:
        """The label codes that differ from the class value they stand for (FairSeg: −1, −2)."""
        return frozenset(c for c, v in self.label_codes.items() if c != v)

    def map_name(self, case_id: str, name: str | None = None) -> str:
        """File name of a case's uncertainty map ``name`` (``<id>_<name>.nii.gz`` or ``<id>.npz``)."""
        return f"{case_id}_{name}.nii.gz" if self.nifti_maps else f"{case_id}.npz"


KIND: dict[str, CohortKind] = {k.name: k for k in (
    CohortKind("nifti", NIFTI, 3, "folder", BINARY_CLASSES, "brain",
               description="NIfTI volumes (images/ + labels/ folders, or <id>_label files), any modality"),
    CohortKind("image2d", IMAGE, 2, "folder", BINARY_CLASSES, "fundus", mask_255=True,
               description="2D images (PNG, JPEG, TIFF, BMP) with 0/1 or 0/255 masks"),
    CohortKind("fairseg", NPZ, 2, "npz", FUNDUS_CLASSES, "fundus", label_codes=FAIRSEG_MASK_CODES,
               modalities=("slo",), description="Harvard-FairSeg: SLO fundus images and disc/cup masks in .npz"),
    CohortKind("fairdomain", NPZ, 2, "npz", FUNDUS_CLASSES, "fundus", label_codes=FAIRSEG_MASK_CODES,
               modalities=("slo", "oct"), description="FairDomain: SLO or OCT fundus images in .npz"),
    # no bundled breast model (yet): the docks offer the 3D brain model, as before
    CohortKind("mamamia", NIFTI, 3, "mamamia", BINARY_CLASSES, "brain", crop="box",
               description="MAMA-MIA: DCE-MRI phases as channels, expert tumour segmentations"),
)}


def kind_of(cohort) -> CohortKind:
    """The description of a cohort's kind (``cohort`` may also be the kind's name).

    Raises
    ------
    ValueError
        The kind is not in :data:`KIND`, naming the known ones.
    """
    name = cohort if isinstance(cohort, str) else cohort.kind
    try:
        return KIND[name]
    except KeyError:
        raise ValueError(f"unknown cohort kind {name!r}; expected one of {tuple(KIND)}") from None
