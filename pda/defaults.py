"""Named defaults, in one place (rq's ``defaults.py``): every module imports them from here.

Algorithm defaults (what an explanation computes when the caller says nothing) and the
lists of allowed names. Deployment configuration lives in :mod:`pda.settings`.
"""

from __future__ import annotations

#: the samplers (docs/algorithm.md §3), in the order the docs list them
SAMPLERS = ("conditional", "marginal", "constant")
#: samplers whose every sample is the same: one forward pass per window
DETERMINISTIC_SAMPLERS = ("constant",)
#: readouts other than a module name (docs/algorithm.md §4)
OUTPUT_LAYERS = ("output", "logits")
#: how a photo is fitted to the model input (pda.images.Placement)
FITS = ("crop", "pad", "squash")
#: execution backends (pda.engine.backends); auto: the fastest exact one installed
BACKENDS = ("auto", "torch", "compile", "openvino", "onnxruntime")
#: forward-pass precisions (pda.engine.device); inputs and sums stay fp32/fp64
PRECISIONS = ("fp32", "bf16", "fp16")
#: what a caller may ask for: a precision, or ``auto`` = bf16 where the device runs it
#: natively and its measured error is within the bar below, else fp32
#: (pda.engine.backends.resolve_precision)
PRECISION_CHOICES = ("auto", *PRECISIONS)
#: what ``precision`` is when nobody says (PDA_PRECISION, --precision, precision=)
DEFAULT_PRECISION = "fp32"
#: the measured error of a reduced precision against fp32, recorded in the result
#: document beside the precision (``runtime.precision_error``): ``seed_ratio`` = the 95th
#: percentile over the evaluation photos of the default map's difference from the fp32
#: map of the same seed (relative L2 and max abs, the larger) as a share of the
#: difference between two fp32 seeds; ``peak_share`` = the largest occlusion-map (fast
#: preset) difference as a share of the map's peak (docs/performance.md, "Precision";
#: studies/performance/precision_error.json, scripts/measure/precision_error.py). bf16
#: was measured with its numerics emulated: the CPU had no native bf16. Not within the
#: bar, so ``auto`` is fp32 everywhere until a native measurement is.
PRECISION_ERROR: dict[str, dict | None] = {"bf16": {
    "seed_ratio": 1.15, "peak_share": 0.081, "photos": 3,
    "numerics": "emulated: weights, conv/linear inputs and outputs rounded to bf16 "
                "(torch autocast's); OpenVINO's native bf16 not measured",
    "see": "docs/performance.md#precision"}}
#: ``auto`` takes a reduced precision only when its bound is below this share of the
#: seed-to-seed difference (issue 31's bar)
PRECISION_BAR = 0.1
#: exact incremental inference (pda.engine.incremental); auto: where measured faster
INCREMENTAL_MODES = ("auto", "on", "off")

#: the service default, chosen by faithfulness per second on 30 photos (docs/faithfulness.md,
#: "Defaults chosen"): window 32 rather than 16 or 48 (16 is worse on four removal
#: metrics, 48 on the correlation); 1 sample rather than 2, 4 or 8 (no different on any
#: removal, correlation, randomisation or constant-fill metric, at half or less of the
#: passes); at occlusion's 626 sweep passes it is more faithful than occlusion on five of
#: seven blur/ROAD removal and correlation metrics, less on the black-fill ones
DEFAULT_SAMPLER = "conditional"
DEFAULT_WINDOW = 32
DEFAULT_STRIDE = 8
DEFAULT_SAMPLES = 1
DEFAULT_PADDING = 2
DEFAULT_TARGET = "top3"
DEFAULT_LAYER = "output"
DEFAULT_SEED = 0
#: the whole photo is explained by default (its overlay covers all of it); crop is the
#: classic centre crop that leaves the margins unexplained (marked on the overlay)
DEFAULT_FIT = "squash"
#: Laplace correction N, as in the authors' code (their training-set size); K defaults to
#: the model's number of classes (docs/algorithm.md §1)
DEFAULT_TRAIN_SIZE = 100_000
#: the paper's settings (Zintgraf et al. 2017, section 4): ``preset="paper"``
PAPER = {"window": 10, "padding": 2, "samples": 10, "stride": 1}
#: plain occlusion (the constant sampler, one pass per window): the default's passes without
#: its sampling; less faithful under blur and ROAD removal, more when the most relevant
#: regions are set to black (docs/faithfulness.md)
FAST = {"sampler": "constant"}
PRESETS = {"default": {}, "fast": FAST, "paper": PAPER}
#: one line per preset, for the CLI's help and the API's schema
PRESET_HELP = ("default = the service defaults; fast = occlusion (constant sampler, one "
               "pass per window, no sampling); paper = "
               + ", ".join(f"{k} {v}" for k, v in PAPER.items()) + " (Zintgraf et al. 2017)")
#: classes in a prediction (the job resource, /v1/predictions)
PREDICTION_TOP = 5
#: most targets one explanation may have
MAX_TARGETS = 20
#: faithfulness scores (deletion/insertion, docs/faithfulness.md): on by default; the fill
#: that replaces deleted pixels and starts insertion, the fraction of pixels per step (4 %:
#: against 2 % the scores move less than between two seeds, at half the passes), the
#: random block orders of the baseline (3: the baseline is already the scores' larger
#: noise; with fewer the beats-random verdict flips between seeds) and their block side
DEFAULT_FAITHFULNESS = True
FAITHFULNESS_FILLS = ("blur", "grey")
FAITHFULNESS_FILL = "blur"
FAITHFULNESS_STEP = 0.04
FAITHFULNESS_ORDERS = 3
FAITHFULNESS_BLOCK = 16
#: what a job is doing, beside its status (the job resource's ``phase``): waiting; loading
#: the model and the image, predicting and building the backend and the sampler; the
#: windows' forward passes; the faithfulness scores' passes; storing the results
PHASES = ("queued", "preparing", "sweeping", "scoring", "writing")
