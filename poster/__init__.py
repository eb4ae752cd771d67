"""poster: POSTER / POSTER V2 facial expression recognition.

Entry points::

    model = poster.create_model("poster_v1_large", num_classes=7)     # fresh network
    model = poster.load_model("rafdb_best.pth", device="cuda")         # ready, in eval mode
    model.meta.class_names, model.meta.input.channel_order             # how to use it
"""

import os as _os

# CPU runs: idle OpenMP threads sleep instead of spinning.  PyTorch's spinning threads stall badly
# on a busy machine (a batch-1 call once took 1.4 s where ONNX Runtime took 59 ms).  It must be
# set before torch loads its OpenMP runtime, i.e. before the first torch import; a user's own
# setting wins, and a program that imported torch first keeps its own policy.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .checkpoint.formats import export_official, read_weight_file, save_checkpoint
from .checkpoint.loading import load_backbone_weights, load_model
from .errors import CheckpointError, DatasetError, PosterError
from .meta import InputConfig, ModelMeta
from .models import create_model, list_models
from .predict import FaceResult, ImageResult, Recognizer

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "load_model", "load_backbone_weights", "save_checkpoint",
    "export_official", "read_weight_file", "InputConfig", "ModelMeta", "PosterError",
    "CheckpointError", "DatasetError", "Recognizer", "FaceResult", "ImageResult", "__version__",
]
