"""Shipped weights, each folder with its model card; package data, found via engine.paths."""
