"""Datasets, image decoding, the evaluation transform and class-name tables."""

from .datasets import (
    ImageListDataset,
    LabelLine,
    affectnet_records,
    folder_records,
    parse_label_file,
    parse_label_text,
    rafdb_records,
)
from .labels import (
    AFFECTNET7_CLASSES,
    AFFECTNET8_CLASSES,
    FER2013_CLASSES,
    RAFDB_CLASSES,
    abbreviate,
)
from .layouts import DATASET_CLASSES, DATASET_NAMES, DATASET_TITLES, LAYOUTS, DatasetLayout, build_dataset, get_layout
from .transforms import (
    IMAGE_EXTENSIONS,
    EvalTransform,
    decode_image_bytes,
    load_image,
    to_normalized_tensor,
    to_uint8_array,
)

__all__ = [
    "AFFECTNET7_CLASSES", "AFFECTNET8_CLASSES", "DATASET_CLASSES", "DATASET_NAMES", "DATASET_TITLES",
    "FER2013_CLASSES", "IMAGE_EXTENSIONS", "RAFDB_CLASSES",
    "DatasetLayout", "EvalTransform", "ImageListDataset", "LabelLine", "LAYOUTS",
    "abbreviate", "affectnet_records", "build_dataset", "decode_image_bytes", "folder_records",
    "get_layout", "load_image", "parse_label_file", "parse_label_text", "rafdb_records", "to_normalized_tensor",
    "to_uint8_array",
]
