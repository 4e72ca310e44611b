"""Builds a DOLG model and prints the descriptor of the bundled sample image.

This is the README's main job until training lands: it shows the full inference
path (image decoding, the model's own normalisation, the backbone, both
branches, orthogonal fusion and L2 normalisation) on one image.

  python -m dolg_tf.demo [--image=path] [--backbone_depth=50] [--image_size=512]
"""

import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from dolg_tf import config as config_lib
from dolg_tf.model import builder

SAMPLE_IMAGE = os.path.join(os.path.dirname(__file__), "sample_data", "landmark.jpg")

FLAGS = flags.FLAGS
flags.DEFINE_string("image", SAMPLE_IMAGE, "Image to describe (JPEG/PNG).")
flags.DEFINE_integer("backbone_depth", 50, "ResNet depth: 50, 101 or 152.")
flags.DEFINE_integer("image_size", 512, "Longest side the image is resized to.")
flags.DEFINE_integer("seed", 0, "Seed of the random initial weights.")


def main(argv):
  del argv  # unused
  path = FLAGS.image
  if not os.path.isabs(path) and "BUILD_WORKING_DIRECTORY" in os.environ:
    path = os.path.join(os.environ["BUILD_WORKING_DIRECTORY"], path)
  if not os.path.exists(path):
    raise app.UsageError(f"--image: file not found: {path}")
  tf.keras.utils.set_random_seed(FLAGS.seed)
  config = config_lib.ModelConfig(backbone_depth=FLAGS.backbone_depth)
  model = builder.build_model(config)
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  height, width = image.shape[:2]
  scale = FLAGS.image_size / max(height, width)
  size = (max(1, round(height * scale)), max(1, round(width * scale)))
  resized = tf.image.resize(tf.cast(image, tf.float32), size, antialias=True)
  start = time.time()
  out = model(resized[None], training=False, return_intermediates=True)
  elapsed = time.time() - start
  descriptor = out["descriptor"].numpy()[0]
  logging.info("model config: %s", config.to_dict())
  print(f"image: {path} ({width}x{height} -> {size[1]}x{size[0]})")
  print(f"model: DOLG R{config.backbone_depth} ({model.count_params():,} parameters, random init)")
  for key in ("f3", "f4", "f_g", "f_l", "f_o"):
    print(f"  {key:<4} {tuple(out[key].shape)}")
  print(
    f"descriptor: dim {descriptor.size}, L2 norm {np.linalg.norm(descriptor):.6f}, "
    f"first values {np.array2string(descriptor[:6], precision=4)}"
  )
  print(f"forward pass (first call, includes tracing): {elapsed:.2f} s")


if __name__ == "__main__":
  app.run(main)
