"""Training data: GLDv2 TFRecords, synthetic landmarks and the tf.data input.

Modules:
  gldv2: the DELF/GLDv2 TFRecord layout (tf.train.Example builder, sharded
    atomic writer, class counts, tf.data parse function).
  image_codec: reading any image file as RGB JPEG bytes (no TensorFlow).
  build_image_dataset: GLDv2 train.csv / train_clean.csv + images -> TFRecords
    (library and binary).
  synthetic: procedural "synthetic landmarks" for training and a Revisited
    Oxford-style retrieval benchmark (library and binary).
  input_pipeline: tf.data training / evaluation input.
  ground_truth: Revisited Oxford / Paris ground truth (.pkl and .mat) and the
    easy / medium / hard protocols (no TensorFlow).
"""
