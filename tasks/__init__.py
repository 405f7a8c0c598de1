"""The ten built-in MAGVIT tasks (paper §3, official masks of google-research/magvit).

They are plugins like any other: registered under the entry-point group ``magvit_pl.tasks`` in
pyproject.toml and loaded through :mod:`magvit_pl.tasks`; importing this package imports none of
them. This folder installs as the import package ``magvit_pl_tasks`` (pyproject's ``package-dir``):
a top-level ``tasks`` would be shadowed by PyPI's ``tasks`` or by any ``tasks.py`` on the user's path. Families: ``prediction`` (frame_prediction, class_frame_prediction), ``interpolation``
(frame_interpolation), ``outpainting`` (outpainting_central/vertical/horizontal/dynamic),
``inpainting`` (inpainting_central/dynamic), ``generation`` (class_generation).
"""
