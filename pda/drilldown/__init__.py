"""Drill-down: a coarse sweep, then exact windows where the map is least certain
(docs/drilldown.md). :mod:`.plan` holds its parameters and pass count without torch (the
API plans and caps jobs with it); :mod:`.refine` (the algorithm and ``explain``'s
adapter), :mod:`.check` (the error estimate) and :mod:`.ssim` are tensor code. This file
imports nothing, so ``pda.drilldown.plan`` stays torch-free."""
