"""The released POSTER weight sets: one complete, declarative record per release.

A ``Release`` is the single source of truth for a set of official weights, the way torchvision's
``Weights`` enums and timm's pretrained configs are: architecture and options, class names in the
authors' order, channel order, normalisation, input size, dataset, paper accuracy, where the file
comes from and under which terms.  ``poster.load_model("poster_v2.rafdb")`` builds the model and
its ``meta`` from the record; guessing from state-dict keys is only for anonymous files.

A release's file lives in ``$POSTER_WEIGHTS`` (default ``~/.cache/poster/weights``) under the
authors' file name; when it is not there it is fetched from the authors' own link on first use
(``hub.py``; ``POSTER_OFFLINE=1`` forbids that).  One model ships inside the package and is
never fetched: ``poster_v1_tiny.fer2013`` (``BUNDLED_MODEL``), a compact POSTER trained here on
FER2013 so that ``poster predict`` works offline; it is a demonstration model on research data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.labels import AFFECTNET7_CLASSES, AFFECTNET8_CLASSES, CAERS_CLASSES, FER2013_CLASSES, RAFDB_CLASSES
from ..errors import CheckpointError
from ..meta import IMAGENET_MEAN, IMAGENET_STD, InputConfig, ModelMeta

V1_CODE = "https://github.com/zczcwh/POSTER"
V2_CODE = "https://github.com/Talented-Q/POSTER_V2"
V1_PAPER = "POSTER, Zheng, Mendieta & Chen, arXiv 2204.04083"
V2_PAPER = "POSTER V2, Mao et al., arXiv 2301.12149"
V1_CHECKPOINT_FOLDER = "1jeCPTGjBL8YgKKB9YrI9TYZywme8gymv"  # the V1 README's "checkpoints" Drive folder
V1_PRETRAIN_FOLDER = "1X9pE-NmyRwvBGpVzJOEvLqRPRfk_Siwq"  # the V1 README's "pretrain" Drive folder

V1_TERMS = "code Apache-2.0 (POSTER V1 repository); weights: terms not stated by the authors"
V2_TERMS = "code MIT (POSTER V2 repository); weights: terms not stated by the authors"
LANDMARK_TERMS = ("no licence stated by cunjian/pytorch_face_landmark; trained on 300W and Menpo, whose terms "
                  "allow non-commercial research only: research use only")


@dataclass(frozen=True)
class Source:
    """Where a release's file comes from: a Google Drive file, or a named file in a Drive folder."""

    kind: str  # "gdrive_file", "gdrive_folder" or "bundled"
    id: str = ""  # Drive file id, or folder id for "gdrive_folder"
    page: str = ""  # the authors' page that gives the link

    @property
    def url(self) -> str:
        if self.kind == "gdrive_file":
            return f"https://drive.google.com/uc?id={self.id}"
        if self.kind == "gdrive_folder":
            return f"https://drive.google.com/drive/folders/{self.id}"
        return "(inside the poster-fer package)"


@dataclass(frozen=True)
class Release:
    """Everything needed to fetch, check and use one set of official weights."""

    name: str
    kind: str  # "model" (a POSTER classifier), "ir50" or "landmark" (backbones for training), "bundled"
    file_name: str  # the authors' file name: the name in the cache and the name to save a hand download as
    source: Source
    dataset: str = ""
    paper_accuracy: float | None = None
    arch: str = ""
    arch_options: tuple[tuple[str, Any], ...] = ()
    class_names: tuple[str, ...] = ()
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    paper: str = ""
    terms: str = ""  # code licence and the weights' own terms, as the authors state them
    terms_summary: str = ""  # the same in a few words (README table)
    provenance: str = ""  # who trained the weights on what, and how they reach us
    class_order_source: str = ""
    other_file_names: tuple[str, ...] = field(default=())  # other names the same file has been seen under

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def file_names(self) -> tuple[str, ...]:
        return (self.file_name, *self.other_file_names)

    def meta(self) -> ModelMeta:
        """The model metadata this release's weights must be used with."""
        if self.kind != "model":
            raise CheckpointError(f"{self.name} is a {self.kind} backbone for training, not a model")
        return ModelMeta(arch=self.arch, num_classes=self.num_classes, class_names=self.class_names,
                         input=InputConfig(input_size=self.input_size, channel_order=self.channel_order,
                                           mean=self.mean, std=self.std),
                         arch_options=dict(self.arch_options), source=self.name, dataset=self.dataset)


def _v1(dataset: str, file_name: str, folder_names: tuple[str, ...], classes, accuracy: float, token_mixing: bool,
        channel_order: str, order_source: str) -> Release:
    return Release(
        f"poster_v1_large.{dataset}", "model", file_name, Source("gdrive_folder", V1_CHECKPOINT_FOLDER, V1_CODE),
        dataset, accuracy, "poster_v1_large", (("token_mixing", token_mixing),), classes, channel_order,
        paper=V1_PAPER, terms=V1_TERMS, terms_summary="code Apache-2.0; weights: not stated",
        class_order_source=order_source, other_file_names=folder_names,
        provenance="trained by the POSTER V1 authors; file from their checkpoints folder on Google Drive")


def _v2(dataset: str, file_name: str, drive_id: str, classes, accuracy: float, order_source: str) -> Release:
    return Release(
        f"poster_v2.{dataset}", "model", file_name, Source("gdrive_file", drive_id, V2_CODE), dataset, accuracy,
        "poster_v2", (), classes, "RGB", paper=V2_PAPER, terms=V2_TERMS,
        terms_summary="code MIT; weights: not stated", class_order_source=order_source,
        provenance="trained by the POSTER V2 authors; file linked from their README on Google Drive")


_RAF_ORDER = "RAF-DB label file codes 1-7 minus 1 (docs/faithfulness.md#datasets-and-label-orders)"
_AFFECTNET_ORDER = "AffectNet expression codes 0-6/0-7 (docs/faithfulness.md#datasets-and-label-orders)"
_V2_FOLDER_ORDER = " as sorted class folders (ImageFolder); the V2 authors do not document their folder names"

RELEASES: dict[str, Release] = {r.name: r for r in (
    # POSTER V1's RAF-DB loader kept cv2's BGR order: the weights expect BGR tensors
    # (docs/faithfulness.md#channel-order).
    _v1("rafdb", "rafdb_best.pth", (), RAFDB_CLASSES, 92.05, True, "BGR", _RAF_ORDER),
    _v1("affectnet7", "affectnet_best.pth", ("affectnet7_best.pth",), AFFECTNET7_CLASSES, 67.31, False, "RGB",
        _AFFECTNET_ORDER),
    _v1("affectnet8", "affectnet8_best.pth", ("affectnet8class_best.pth",), AFFECTNET8_CLASSES, 63.34, False, "RGB",
        _AFFECTNET_ORDER),
    _v2("rafdb", "raf-db-model_best.pth", "1aVm_hmJyZ5E_0p25XTbm3X9ophsKqCxv", RAFDB_CLASSES, 92.21,
        "RAF-DB codes 1-7" + _V2_FOLDER_ORDER),
    _v2("affectnet7", "affecnet-7-model_best.pth", "1c_gp5UdlcMjIB2dZtdhXFfHOQg1OqU-D", AFFECTNET7_CLASSES, 67.49,
        "AffectNet codes 0-6" + _V2_FOLDER_ORDER),
    _v2("affectnet8", "affecnet-8-model_best.pth", "1tdYH12vgWnIWfupuBkP3jmWS0pJtDxvh", AFFECTNET8_CLASSES, 63.77,
        "AffectNet codes 0-7" + _V2_FOLDER_ORDER),
    _v2("caers", "caer-s-model_best.pth", "1Q7RDJxVPTkDH2rlhiAiOpSbIo1wUOqPv", CAERS_CLASSES, 93.00,
        "CAER-S class folders (Anger, Disgust, Fear, Happy, Neutral, Sad, Surprise; Lee et al., ICCV 2019) "
        "sorted by ImageFolder"),
    Release("ir50", "ir50", "ir50.pth", Source("gdrive_file", "17QAIPlpZUwkQzOTNiu-gUFLTqAxS-qHt", V2_CODE),
            "ms1m", paper="IR-50 (ArcFace, Deng et al.) as given by the POSTER authors",
            terms="weights: terms not stated by the POSTER authors (a face-recognition IR-50, presumably "
                  "face.evoLVe's, trained on MS-Celeb-1M, a withdrawn research data set)",
            terms_summary="weights: not stated (trained on MS-Celeb-1M)",
            provenance="the IR-50 the POSTER authors give in their pretrained folder (V1) and README (V2)"),
    Release("mobilefacenet68", "landmark", "mobilefacenet_model_best.pth.tar",
            Source("gdrive_file", "1SMYP5NDkmDE3eLlciN7Z4px-bvFEuHEX", V2_CODE), "300w",
            paper="68-point MobileFaceNet landmark net, cunjian/pytorch_face_landmark", terms=LANDMARK_TERMS,
            terms_summary="no licence stated; 300W/Menpo data: research use only",
            provenance="trained by cunjian/pytorch_face_landmark on 300W/Menpo; redistributed by the POSTER "
                       "authors in their pretrained folder; not trained by them"),
)}

BUNDLED_RELEASE = "poster_v1_tiny.fer2013"
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "poster_v1_tiny_fer2013.pth"

BUNDLED = Release(
    BUNDLED_RELEASE, "bundled", BUNDLED_MODEL.name, Source("bundled"), "fer2013", 56.8, "poster_v1_tiny", (),
    FER2013_CLASSES, "RGB", paper="this project (docs/results.md; 56.8 is FER2013 PublicTest, not a paper figure)",
    terms="trained weights MIT (this project); the embedded 68-point landmark weights: " + LANDMARK_TERMS
          + "; FER2013 is research data: the bundled model is for research use",
    terms_summary="MIT, but embeds research-only landmark weights and FER2013: research use only",
    provenance="trained here with poster train on FER2013; its landmark net is cunjian/pytorch_face_landmark's "
               "68-point MobileFaceNet, rebuilt from that repository's OpenVINO export (the file the POSTER "
               "authors redistribute, not theirs)",
    class_order_source="sorted Kaggle FER2013 folder names")


def all_releases() -> list[Release]:
    """Every release this version knows, the bundled one included (for listings)."""
    return [*RELEASES.values(), BUNDLED]


def get_release(name: str) -> Release:
    if name == BUNDLED_RELEASE:
        return BUNDLED
    try:
        return RELEASES[name]
    except KeyError:
        raise CheckpointError(f"{name}: not a release name (known: {', '.join([BUNDLED_RELEASE, *RELEASES])})") from None


def bundled_model_path() -> Path:
    """The packaged default model (``CheckpointError`` if this install lacks the file)."""
    if not BUNDLED_MODEL.is_file():
        raise CheckpointError(f"the bundled model {BUNDLED_MODEL} is missing from this install of poster; "
                              "reinstall the package or pass a checkpoint")
    return BUNDLED_MODEL


def weights_dir() -> Path:
    return Path(os.environ.get("POSTER_WEIGHTS", Path.home() / ".cache" / "poster" / "weights")).expanduser()


def release_path(release: Release) -> Path:
    """Where the release's file is kept (and where to save a hand download)."""
    return weights_dir() / release.file_name


def local_release_file(release: Release) -> Path | None:
    """The release's file if it is already here: the cache under any of its names, then the current folder."""
    for folder in (weights_dir(), Path.cwd()):
        for file_name in release.file_names:
            if (folder / file_name).is_file():
                return folder / file_name
    return None
