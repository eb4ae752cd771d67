"""Model definitions.  They read no files and know no devices.

Importing the network modules registers their builders (``@register_model``).
"""

from .mobilefacenet import MobileFaceNet
from .irse import IR50Trunk
from .poster_v1 import PosterV1
from .poster_v2 import PosterV2
from .registry import ArchSpec, create_model, get_arch, list_models, register_model

__all__ = ["MobileFaceNet", "IR50Trunk", "PosterV1", "PosterV2", "ArchSpec", "create_model", "get_arch", "list_models",
           "register_model"]
