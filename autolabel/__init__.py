"""Visual Autolabel: the U-Net that labels V1-V3 (or eccentricity rings) on cortical flatmaps.

This package is what runs inside the training image: ``python -m autolabel.train CELL_DIR``.
It never imports Prefect.
"""
