"""napari-fairseg: fair medical image segmentation with active learning, inside napari.

Importing the package loads neither Qt nor torch; the headless core lives in ``data``,
``metrics`` and ``report``, the command line in ``cli``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
