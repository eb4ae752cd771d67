"""Face detection and alignment for prediction in the wild.

``build_detector("yunet" | "none" | detector)`` gives an object with ``detect(image_bgr) ->
list[Face]``; ``face_crop`` / ``align_face`` turn a face into the crop a POSTER model expects
(see ``poster.face.align`` for the canonical template and how it was chosen).
"""

from .align import (
    CANONICAL_TEMPLATE,
    DEFAULT_CROP_SIZE,
    align_face,
    crop_box,
    face_crop,
    similarity_transform,
    template_points,
    transform_points,
)
from .detect import (
    LANDMARK_NAMES,
    Face,
    FaceDetector,
    NoDetector,
    YuNetDetector,
    build_detector,
    bundled_yunet_path,
    list_detectors,
    register_detector,
)

__all__ = [
    "CANONICAL_TEMPLATE", "DEFAULT_CROP_SIZE", "LANDMARK_NAMES", "Face", "FaceDetector", "NoDetector",
    "YuNetDetector", "align_face", "build_detector", "bundled_yunet_path", "crop_box", "face_crop",
    "list_detectors", "register_detector", "similarity_transform", "template_points", "transform_points",
]
