"""poster: POSTER / POSTER V2 facial expression recognition.

Entry points::

    model = poster.create_model("poster_v1_large", num_classes=7)     # fresh network
    model = poster.load_model("rafdb_best.pth", device="cuda")         # ready, in eval mode
    model.meta.class_names, model.meta.input.channel_order             # how to use it
    rec = poster.Recognizer.from_checkpoint("rafdb_best.pth")          # faces in the wild

The public names are loaded on first use (PEP 562): ``import poster`` and ``import poster.models``
load neither OpenCV nor the face stack; ``poster.Recognizer`` does.
"""

import importlib as _importlib
import os as _os

from .lazy import lazy_exports

# CPU runs: idle OpenMP threads sleep instead of spinning.  PyTorch's spinning threads stall badly
# on a busy machine (a batch-1 call once took 1.4 s where ONNX Runtime took 59 ms).  It must be
# set before torch loads its OpenMP runtime, i.e. before the first torch import; a user's own
# setting wins, and a program that imported torch first keeps its own policy.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_EXPORTS = {
    "create_model": ".models", "list_models": ".models",
    "load_model": ".checkpoint.loading", "load_backbone_weights": ".checkpoint.checked",
    "save_checkpoint": ".checkpoint.formats", "export_official": ".checkpoint.formats",
    "read_weight_file": ".checkpoint.formats",
    "InputConfig": ".meta", "ModelMeta": ".meta",
    "PosterError": ".errors", "CheckpointError": ".errors", "DatasetError": ".errors",
    "Recognizer": ".inference.recognizer",
    "FaceResult": ".inference.results", "ImageResult": ".inference.results",
}

__all__ = [*_EXPORTS, "__version__"]


# subpackages reachable as attributes (poster.inference.runtime ...) without importing them up front
_SUBPACKAGES = {"checkpoint", "data", "evaluation", "face", "inference", "models", "serve", "train",
                "errors", "meta", "fileio"}


_named, __dir__ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return _importlib.import_module(f".{name}", __name__)
    return _named(name)
