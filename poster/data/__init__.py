"""Datasets, image decoding, the evaluation transform and class-name tables.

The names load on first use (PEP 562), so ``poster.data.layouts`` (the dataset names the command line
offers) and ``poster.data.labels`` load neither torch nor OpenCV; the readers and transforms do."""

from ..lazy import lazy_exports

# public name -> the module of this package that defines it
_EXPORTS = {
    **dict.fromkeys(("ImageListDataset", "LabelLine", "affectnet_records", "folder_records", "parse_label_file",
                     "parse_label_text", "rafdb_records"), ".datasets"),
    **dict.fromkeys(("AFFECTNET7_CLASSES", "AFFECTNET8_CLASSES", "FER2013_CLASSES", "RAFDB_CLASSES", "abbreviate"),
                    ".labels"),
    **dict.fromkeys(("DATASET_CLASSES", "DATASET_NAMES", "DATASET_TITLES", "LAYOUTS", "DatasetLayout", "build_dataset",
                     "get_layout"), ".layouts"),
    **dict.fromkeys(("IMAGE_EXTENSIONS", "EvalTransform", "decode_image_bytes", "load_image", "to_normalized_tensor",
                     "to_uint8_array"), ".transforms"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
