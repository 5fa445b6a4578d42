"""Pseudo-image generators behind one interface: the world generator and hub pipelines."""
