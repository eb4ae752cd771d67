"""Class names, in model-output order, of the datasets POSTER was released on.

The orders are the ones the original code used (docs/faithfulness.md#datasets-and-label-orders); the
abbreviations are those of the original confusion-matrix plots.
"""

from __future__ import annotations

RAFDB_CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
AFFECTNET7_CLASSES = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")
AFFECTNET8_CLASSES = AFFECTNET7_CLASSES + ("Contempt",)
# Kaggle FER2013 folder names, sorted (the folder-layout class order).
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# CAER-S class folder names (Lee et al., ICCV 2019), sorted as POSTER V2's ImageFolder sorts them.
# FER+ (Barsoum et al.): the 8 emotion columns of its label.csv, in file order
FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
CAERS_CLASSES = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")

_ABBREVIATIONS = {
    "surprise": "SU", "fear": "FE", "disgust": "DI", "happiness": "HA", "happy": "HA",
    "sadness": "SA", "sad": "SA", "anger": "AN", "angry": "AN", "neutral": "NE", "contempt": "CO",
}


def abbreviate(name: str) -> str:
    """Two-letter label used on confusion-matrix axes (falls back to the name itself)."""
    return _ABBREVIATIONS.get(name.lower(), name)
