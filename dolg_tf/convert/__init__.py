"""Importers of external weights (Keras ImageNet .h5, official DOLG checkpoints)."""
