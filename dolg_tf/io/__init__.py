"""File formats and contracts at the bottom layer: DELF's formats, descriptors, configs, images.

Modules:
  datum_io: NumPy arrays <-> DatumProto / DatumPairProto bytes and files.
  feature_io: local features (locations, scales, descriptors, attention,
    orientations) <-> DelfFeatures bytes and files.
  descriptor_files: the global descriptor files extraction writes (per image
    or .npz shards), their validity checks and writers.
  descriptor_reading: reading them back (read_descriptors, list_ids, descriptor_dim).
  binarize: binarised local descriptors (DELG*): packed sign bits, Hamming matching.
  image_loading: loading, resizing and cropping images as DELF does.
  image_pyramid: an extraction's image scales and the input sizes the network may see.
  config_io: loading and validating DolgConfig text files.
  savedmodel_contract, export_section: the SavedModel contract (names, config
    asset, interface version; the export section read through ExportConfig).
  config_base: the base of config sections.
"""
