"""Overlays: the photo untouched where it looks normal, colour where the map nears the threshold,
the failing region outlined, the peak marked, an optional legend strip."""

import numpy as np

from patchshift.core.engine.visualize import START, overlay


def test_only_what_nears_the_threshold_is_coloured_and_the_rest_is_the_photo():
    photo = np.full((200, 200, 3), 90, np.uint8)
    heatmap = np.zeros((200, 200), np.float32)
    heatmap[120:160, 120:160] = 2.0  # above the threshold 1.0
    heatmap[20:50, 20:50] = START + 0.1  # near it: coloured, not outlined
    out = overlay(photo, heatmap, threshold=1.0)
    assert out.shape == photo.shape
    assert (out[60:110, 60:110] == 90).all()  # far from both: untouched
    assert (out[30:40, 30:40] != 90).any(axis=-1).all()  # near the threshold: tinted
    inside = out[135:145, 135:145].astype(int)
    assert (inside[..., 0] > inside[..., 1] + 60).all()  # above it: red
    rim = out[118:123, 125:155]  # the outline around the failing square, drawn in white over black
    assert (rim == 255).all(axis=-1).any() and (rim == 0).all(axis=-1).any()
    assert (
        not (out[20:50, 20:50] == 255).all(axis=-1).any()
    )  # the near-threshold patch has no outline


def test_the_peak_is_marked_and_the_legend_is_a_strip_below():
    photo = np.full((120, 160, 3), 90, np.uint8)
    heatmap = np.zeros((120, 160), np.float32)
    assert (
        overlay(photo, heatmap + 0.5, threshold=1.0) == 90
    ).all()  # nothing near the threshold: the photo as it is
    heatmap[30, 100] = 0.8  # the worst spot, near the threshold
    out = overlay(photo, heatmap, threshold=1.0)
    ring = out[30 - 8 : 30 + 9, 100 - 8 : 100 + 9]
    assert (ring[..., 2] == 255).any() and (ring[..., 0] == 0).any()  # the cyan circle around it
    with_legend = overlay(photo, heatmap, threshold=1.0, legend=True)
    assert with_legend.shape[0] > photo.shape[0] and with_legend.shape[1] == photo.shape[1]
    np.testing.assert_array_equal(with_legend[: photo.shape[0]], out)
