"""Drill-down, the engine's approximate mode (docs/drilldown.md): a coarse sweep, then exact
windows where the map is least certain (:mod:`.refine`), with its error estimated against
the exact map (:mod:`.check`, :mod:`.ssim`). Its parameters and pass bound are torch-free,
in :mod:`pda.grid`, so the API plans and caps drill-down jobs without torch."""
