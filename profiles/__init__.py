"""Profiles as TOML data; package data, found via engine.paths."""
