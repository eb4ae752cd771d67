"""Model definitions.  They read no files and know no devices.

Importing the network modules registers their builders (``@register_model``).
"""

from .mobilefacenet import MobileFaceNet
from .irse import IR50Trunk
from .poster_v1 import PosterV1
from .poster_v2 import PosterV2
from .registry import ArchSpec, ModelFamily, create_model, family_of, get_arch, list_families, list_models, \
    register_family, register_model

__all__ = ["MobileFaceNet", "IR50Trunk", "PosterV1", "PosterV2", "ArchSpec", "ModelFamily", "create_model", "family_of",
           "get_arch", "list_families", "list_models", "register_family", "register_model"]
