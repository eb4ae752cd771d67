"""Face detection and alignment for prediction in the wild.

``build_detector("yunet" | "none" | detector)`` gives an object with ``detect(image_bgr) ->
list[Face]``; ``face_crop`` / ``align_face`` turn a face into the crop a POSTER model expects
(see ``poster.face.align`` for the canonical template and how it was chosen).

The names load on first use (PEP 562): ``DETECTOR_NAMES`` (what the command line offers) needs no
OpenCV; everything else does.
"""

from ..lazy import lazy_exports

# The detectors built in (poster.face.detect registers exactly these; tests/test_face.py checks it).
DETECTOR_NAMES = ("none", "yunet")

_EXPORTS = {
    **dict.fromkeys(("CANONICAL_TEMPLATE", "DEFAULT_CROP_SIZE", "align_face", "crop_box", "face_crop",
                     "similarity_transform", "template_points", "transform_points"), ".align"),
    **dict.fromkeys(("LANDMARK_NAMES", "Face", "FaceDetector", "NoDetector", "YuNetDetector", "build_detector",
                     "bundled_yunet_path", "list_detectors", "register_detector"), ".detect"),
}

__all__ = ["DETECTOR_NAMES", *sorted(_EXPORTS)]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
