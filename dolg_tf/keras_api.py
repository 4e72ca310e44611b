"""The one Keras 2 API that dolg_tf builds on: `from dolg_tf.keras_api import keras`.

TensorFlow 2.15 ships Keras 2 as `tf.keras`, and tf-models-official 2.15 builds
on that copy. From TensorFlow 2.16 on, `tf.keras` is Keras 3 unless
TF_USE_LEGACY_KERAS=1 was set before TensorFlow loaded, and Keras 2 lives on as
the `tf_keras` package, which tf-models-official 2.16+ imports explicitly. dolg_tf
does the same: it takes the Keras 2 that tf-models-official uses on this
TensorFlow, so schedules, optimizers and mixed-precision policies are one family
of objects, checkpoints track every variable, and the environment variable is
neither needed nor changed. A user's Keras 3 (`import keras`, or `tf.keras` on
TF >= 2.16) is left alone: dolg_tf never imports it.
"""

import tensorflow as tf

# TF 2.15's tf.keras is Keras 2 (the `keras` 2.15 package); tf_keras 2.15 is a
# separate copy whose objects do not mix with tf-models-official 2.15's.
KERAS_FROM_TF = tuple(int(p) for p in tf.__version__.split(".")[:2]) < (2, 16)

if KERAS_FROM_TF:
  keras = tf.keras
else:
  import tf_keras as keras  # noqa: F401 (the module this file exports)

__all__ = ["keras", "KERAS_FROM_TF"]
