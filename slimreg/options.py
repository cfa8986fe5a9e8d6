"""Every option list and default a user can set, in one place.

The CLI, the Python API (``run_job``), the plan, the Nextflow schema check (tests/test_options.py compares
``nextflow_schema.json`` and ``nextflow.config`` with this module) and the README read them from here.
Presets (the working resolutions) live with the registration settings they expand into
(slimreg.register.settings).
"""

from __future__ import annotations

# The engine registry: name -> "module:Class", imported only when chosen (VALIS pulls in torch). A class has
# ``name`` and either ``register_pair`` (one moving image; wrapped by slimreg.register.engine.PairwiseEngine) or
# ``register_many``. Its results all pass the one judgement (slimreg.register.judgement) before anything is written;
# its memory cost is in slimreg.estimate (``pair_bytes``). The CLI, settings, schema check and README read it here.
ENGINE_CLASSES = {
    "valis": "slimreg.register.valis_engine:ValisEngine",
    "feature": "slimreg.register.feature:FeatureEngine",
}
ENGINES = tuple(ENGINE_CLASSES)
DEFAULT_ENGINE = "feature"  # the more accurate on real sections (docs/accuracy.md) and the lighter
PRESET_ORDER = ("high", "medium", "low")  # an out-of-memory retry steps down this list
DEFAULT_PRESET = "medium"
TRANSFORM_MODELS = ("affine", "similarity")
DEFAULT_TRANSFORM_MODEL = "affine"
COMPRESSIONS = ("deflate", "zstd", "lzw", "jpeg", "none")
DEFAULT_COMPRESSION = "deflate"
FORMATS = ("ome-tiff", "ome-zarr")  # what registered/<sample>/ (and merged/) hold
DEFAULT_FORMAT = "ome-tiff"
# each frame of a recording aligned to its session's template before sessions are registered (off: frames as
# recorded); rigid by default: on the real two-photon movie piecewise gained 0.013 in correlation with the mean and
# lost a little crispness, at under half the speed (docs/motion.md)
MOTION_CORRECTION_MODES = ("rigid", "piecewise", "off")
DEFAULT_MOTION_CORRECTION = "rigid"
# the corrected frames' type: float32 (CaImAn's), which keeps every subpixel move whole, or the
# recording's own, half the disk for uint16 movies, where what a move overshoots below zero is clipped: on the real
# two-photon movie that made the corrected mean less crisp than the uncorrected one (docs/motion.md, "Interpolation")
MOTION_DTYPES = ("input", "float32")
DEFAULT_MOTION_DTYPE = "float32"


def corrected_dtype(choice: str, recording_dtype: str) -> str:
    """The type corrected frames are written in, for a --motion-dtype ``choice`` and the recording's own type."""
    return recording_dtype if choice == "input" else choice
DEFAULT_TILE_SIZE = 1024  # tiles of the registered images users keep
WORK_TILE_SIZE = 512  # tiles of intermediate files (split pieces, projections, merged stacks, demo data)
DEFAULT_BATCH_SIZE = 3  # moving images (sessions) per REGISTER task, besides the reference
DEFAULT_QC_MAX_DIM = 2048  # long side of QC images, px
MODES = ("subprocess", "parallel", "serial")
DEFAULT_MODE = "subprocess"
DEFAULT_MAX_RETRIES = 2  # retries after an out-of-memory kill or a budget stop, one preset lower each
