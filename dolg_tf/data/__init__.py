"""Training data: GLDv2 TFRecords, synthetic landmarks and the tf.data input.

Modules:
  gldv2: the DELF/GLDv2 TFRecord layout (tf.train.Example builder, sharded
    atomic writer, class counts, tf.data parse function).
  gldv2_files: GLDv2's train.csv / train_clean.csv readers and the image
    folder layout (where an id's file is; no TensorFlow).
  image_codec: reading any image file as RGB JPEG bytes (no TensorFlow).
  dataset_plan: relabeling, the stratified train/validation split and the
    shard of every record, decided before any image is read (no TensorFlow).
  dataset_config: DatasetBuildConfig, the settings of one dataset build
    (the dataset commands' flags are its fields; no TensorFlow).
  dataset_writer: a planned dataset -> TFRecord shards, relabeling.csv and
    failures.csv, in one process.
  own_dataset: your own images as a source (a folder of class folders, or a
    path,label CSV; no TensorFlow).
  split_lists: a built dataset's image lists, labels and validation solution
    for dolg-extract / dolg-recognize.
  build_image_dataset: the `dolg-build-dataset` command.
  beam_dataset, beam_build_dataset: the same shards on Apache Beam, and its
    `dolg-build-dataset-beam` command.
  synthetic_scenes: procedural "synthetic landmarks" and their random views
    (no TensorFlow).
  synthetic: a synthetic training set (TFRecords) and the `dolg-synthetic`
    command; synthetic_benchmark: a Revisited Oxford-style retrieval
    benchmark of them.
  input_pipeline: tf.data training / evaluation input and the record checks
    before training; preprocessing: its crops, flips and resizes.
  ground_truth: Revisited Oxford / Paris ground truth (.pkl and .mat) and the
    easy / medium / hard protocols (no TensorFlow).
"""
