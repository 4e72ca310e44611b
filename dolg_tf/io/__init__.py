"""DELF-compatible file formats (DatumProto, DelfFeatures) and extraction configs.

Modules:
  datum_io: NumPy arrays <-> DatumProto / DatumPairProto bytes and files.
  feature_io: local features (locations, scales, descriptors, attention,
    orientations) <-> DelfFeatures bytes and files.
  config_io: loading and validating DolgConfig text files.
"""
