"""itir: interactive text-to-image retrieval."""
