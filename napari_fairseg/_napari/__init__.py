"""The napari skin: the only package that imports napari and Qt (docks, the job worker)."""
