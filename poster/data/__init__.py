"""Datasets, image decoding, the evaluation transform and class-name tables."""

from .datasets import (
    DATASET_NAMES,
    ImageListDataset,
    LabelLine,
    affectnet_records,
    build_dataset,
    folder_records,
    parse_label_file,
    parse_label_text,
    rafdb_records,
)
from .labels import (
    AFFECTNET7_CLASSES,
    AFFECTNET8_CLASSES,
    DATASET_CLASSES,
    DATASET_TITLES,
    FER2013_CLASSES,
    RAFDB_CLASSES,
    abbreviate,
)
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
    "EvalTransform", "ImageListDataset", "LabelLine",
    "abbreviate", "affectnet_records", "build_dataset", "decode_image_bytes", "folder_records",
    "load_image", "parse_label_file", "parse_label_text", "rafdb_records", "to_normalized_tensor",
    "to_uint8_array",
]
