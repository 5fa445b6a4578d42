"""Fusing the text query and the generated pseudo-image into one search vector.

Every fusion is a `Fusion` (fusion/base.py): it knows vectors only, says whether it needs
the pseudo-image, returns what it decided next to the query, and saves/loads as a folder.
"""

from fusion.base import Fused, Fusion
from fusion.factory import FUSIONS, load_fusion
from fusion.static import DAR, Add, TextOnly

__all__ = ["DAR", "FUSIONS", "Add", "Fused", "Fusion", "TextOnly", "load_fusion"]
