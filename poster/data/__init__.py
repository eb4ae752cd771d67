"""Datasets, image decoding, the evaluation transform and class-name tables.

The names load on first use (PEP 562), so ``poster.data.layouts`` (the dataset names the command line
offers) and ``poster.data.labels`` load neither torch nor OpenCV; the readers and transforms do."""

import importlib as _importlib

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


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poster.data' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
