"""Encoders, gallery ingestion, the vector index and the search engine."""
