"""The picture ``python -m autolabel.predict`` draws per subject, to check its labels at a glance.

Top: the flatmap the model saw (left hemisphere | right hemisphere, the sign of curvature in
grey) with the labels as written to the surface, filled, and, with ``--truth``, the true
borders as dashed lines. Bottom: each hemisphere's surface (``?h.inflated`` when the subject
has one, else the white surface) seen from behind and the midline, where V1 lies along the
calcarine sulcus, coloured by the same labels (nilearn's ``plot_surf_roi``). The colours are
the annotation's (``autolabel.predict.files.COLOURS``). Needs matplotlib (the ``flow`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autolabel.celldir import write_atomic
from autolabel.datasets.cortex import HEMIS
from autolabel.datasets.format import LABELS
from autolabel.predict.files import COLOURS

# (elevation, azimuth) of nilearn's camera: behind and a little to the midline of each hemisphere.
VIEWS = {"lh": (0, 300), "rh": (0, 240)}
SIDES = {"lh": "left", "rh": "right"}
BACK = 0.45  # the share of the hemisphere's length shown, from the occipital pole


@dataclass
class SurfaceView:
    """One hemisphere's mesh for the 3-D panel, with a shade per vertex and the written codes."""

    coords: np.ndarray  # [N, 3]
    faces: np.ndarray  # [F, 3]
    shade: np.ndarray  # [N] curvature
    codes: np.ndarray  # [N] 0 none, 1..L


def check_matplotlib() -> None:
    """Fail before anything is written when the picture cannot be drawn."""
    import importlib.util

    from autolabel.errors import BadInput

    if importlib.util.find_spec("matplotlib") is None:
        raise BadInput("matplotlib is not installed: the pictures need it; pip install 'visual-autolabel-grid[flow]'")


def draw_subject(
    png: Path,
    title: str,
    prediction: str,
    curvature: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray | None,
    surfaces: dict[str, SurfaceView],
) -> None:
    """Write the picture atomically. ``curvature``, ``predicted`` and ``truth`` are [rows, cols] images
    (LH | RH), the codes as the importer rasterises the per-vertex labels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rgb = np.array(COLOURS[prediction], float) / 255
    names = LABELS[prediction]
    rows, cols = curvature.shape
    fig = Figure(figsize=(10, 5.0 + 10 * rows / cols), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[10 * rows / cols, 5.0])
    ax = fig.add_subplot(grid[0, :])
    # 1. The flatmap: curvature, the labels filled, their borders; the true borders dashed.
    ax.imshow(np.sign(curvature), cmap="gray_r", vmin=-3, vmax=3, interpolation="nearest")
    fill = np.zeros((rows, cols, 4))
    fill[predicted > 0, :3] = rgb[predicted[predicted > 0]]
    fill[predicted > 0, 3] = 0.55
    ax.imshow(fill, interpolation="nearest")
    for k in range(1, len(names) + 1):
        for codes, style in ((predicted, "solid"), (truth, "dashed")):
            if codes is not None and (codes == k).any():
                ax.contour(codes == k, levels=[0.5], colors=[rgb[k] * 0.6], linestyles=style, linewidths=1.2)
    ax.axvline(cols / 2 - 0.5, color="white", linewidth=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("flatmap, left | right hemisphere", fontsize=9)
    handles = [Patch(color=rgb[k], label=name) for k, name in enumerate(names, 1)]
    handles.append(Line2D([], [], color="black", label="predicted border"))
    if truth is not None:
        handles.append(Line2D([], [], color="black", linestyle="dashed", label="true border"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncols=len(handles), fontsize=8,
              frameon=False)
    # 2. Each hemisphere's surface from behind.
    cmap = ListedColormap(rgb[1:])
    for i, hemi in enumerate(HEMIS):
        draw_surface(fig.add_subplot(grid[1, i], projection="3d"), fig, hemi, surfaces[hemi], cmap, len(names))
    fig.suptitle(title, fontsize=10)
    write_atomic(png, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def draw_surface(ax, fig, hemi: str, view: SurfaceView, cmap, n_labels: int) -> None:
    from nilearn import plotting  # deferred: importing nilearn's plotting costs ~3 s

    plotting.plot_surf_roi(
        (view.coords, view.faces), roi_map=view.codes, hemi=SIDES[hemi], view=VIEWS[hemi],
        bg_map=np.clip(view.shade, -0.5, 0.5), axes=ax, figure=fig, cmap=cmap, vmin=1, vmax=n_labels,
        threshold=0.5, colorbar=False, engine="matplotlib",
    )  # fmt: skip
    # Only the back of the hemisphere (FreeSurfer's y runs posterior to anterior), at true proportions.
    lo, hi = view.coords.min(axis=0), view.coords.max(axis=0)
    hi[1] = lo[1] + BACK * (hi[1] - lo[1])
    for set_lim, a, b in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), lo, hi):
        set_lim(a, b)
    ax.set_box_aspect(hi - lo, zoom=1.25)
    ax.set_title(f"{hemi}: the back and the midline", fontsize=9)
