"""Fusing the text query and the generated pseudo-image into one search vector.

Every fusion is a `Fusion` (fusion/base.py): it knows vectors only, says whether it needs
the pseudo-image, returns what it decided next to the query, and saves/loads as a folder.
"""

from fusion.adafuse import ADaFuSE, ADaFuSEConfig, FusionMismatchError
from fusion.base import Fused, Fusion
from fusion.factory import BUILT_IN, FUSIONS, load_fusion
from fusion.static import DAR, Add, TextOnly

__all__ = ["BUILT_IN", "DAR", "FUSIONS", "ADaFuSE", "ADaFuSEConfig", "Add", "Fused", "Fusion",
           "FusionMismatchError", "TextOnly", "load_fusion"]
