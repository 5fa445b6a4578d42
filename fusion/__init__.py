"""Fusing the text query and the generated pseudo-image into one search vector."""
