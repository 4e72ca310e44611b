"""Descriptor extraction from exported SavedModels."""
