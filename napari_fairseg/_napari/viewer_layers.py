"""The docks' dealings with the viewer's layer list: which case is open, showing a case, focus.

Every layer the plugin adds for a case carries ``metadata["fairseg"]`` (see
:func:`napari_fairseg.data.layers.case_tag`): the cohort it came from, its declared classes and
the case id. Opening a case replaces the layers the plugin showed for any other case — overlays
of a 1411² photo must not stay under a 64² image — except editable annotations, which only the
Active learning dock removes (after asking about unsaved edits).
"""

from __future__ import annotations

import numpy as np

from ..errors import FairSegError

#: what opening a cohort, a case or a project can raise on a user's files (shown, never raised)
FILE_ERRORS = (FairSegError, OSError, ValueError, KeyError)


def tag_of(layer) -> dict:
    """A layer's ``metadata["fairseg"]`` (empty when the plugin did not make it)."""
    return (getattr(layer, "metadata", None) or {}).get("fairseg", {}) or {}


def current_case(viewer) -> tuple[dict, list | None] | None:
    """``(tag, affine)`` of the selected layer's case, else of the newest case layer; ``None``
    when no layer belongs to a cohort's case."""
    active = viewer.layers.selection.active
    for layer in ([active] if active is not None else []) + list(viewer.layers)[::-1]:
        tag = tag_of(layer)
        if tag.get("cohort") and tag.get("case_id"):
            return tag, tag.get("affine")
    return None


def focus_on(viewer, mask, scale) -> None:
    """Move the viewer's slider to the middle of ``mask``'s structure (a no-op when it is empty).

    ``mask`` ``(*S)`` in voxels, ``scale`` its voxel size; napari's dims points are in world units.
    """
    mask = np.asarray(mask)
    if mask.ndim < 3 or not mask.any():
        return
    centre = np.argwhere(mask).mean(axis=0)
    for axis in range(mask.ndim - 2):  # the sliced (not displayed) axes
        viewer.dims.set_point(axis, float(centre[axis]) * float(scale[axis]))


#: layer settings that carry over when a shown layer is refreshed in place
_REFRESHED = ("scale", "metadata", "colormap", "contrast_limits", "opacity", "blending", "visible")


def _refreshable(layer, data, kwargs, kind) -> bool:
    """Whether ``layer`` can take the new data in place (same kind, dimensions and colour mode)."""
    return (type(layer).__name__.lower() == kind and "channel_axis" not in kwargs
            and bool(getattr(layer, "rgb", False)) == bool(kwargs.get("rgb", False))
            and np.ndim(layer.data) == np.ndim(data))


def show_layers(viewer, old: list, tuples) -> list:
    """Show layer tuples ``(data, kwargs, kind)`` in place of a dock's previous ``old`` layers.

    A layer already shown under the same name is refreshed in place (napari builds a new
    layer's visuals on the GUI thread: ~0.2–0.4 s for a Labels layer, whatever its size); other
    ``old`` layers and the plugin's layers of any *other* case than the new one (editable
    annotations excepted) are removed. Returns the layers now shown.
    """
    names = {kw.get("name") for _, kw, _ in tuples}
    case_ids = {kw.get("metadata", {}).get("fairseg", {}).get("case_id") for _, kw, _ in tuples} - {None}
    by_name = {layer.name: layer for layer in viewer.layers}
    reuse = {kw["name"]: by_name[kw["name"]] for data, kw, kind in tuples
             if kw.get("name") in by_name and _refreshable(by_name[kw["name"]], data, kw, kind)}
    stale = [layer for layer in old if layer.name not in reuse]
    for layer in viewer.layers:
        tag = tag_of(layer)
        other_case = case_ids and tag.get("case_id") and tag["case_id"] not in case_ids
        if layer.name not in reuse and (layer.name in names or (other_case and not tag.get("annotation"))):
            stale.append(layer)
    for layer in stale:
        if layer in viewer.layers:
            viewer.layers.remove(layer)
    new = []
    for data, kwargs, kind in tuples:
        layer = reuse.get(kwargs.get("name"))
        if layer is not None:
            layer.data = data
            for key in _REFRESHED:
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            new.append(layer)
            continue
        added = getattr(viewer, f"add_{kind}")(data, **kwargs)
        new += list(added) if isinstance(added, list | tuple) else [added]
    return new
