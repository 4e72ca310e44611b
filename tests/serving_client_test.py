"""Tests for export/serving_client.py requests against an exported model."""

import base64
import io

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.export import serving_client
from tests import testutil


class ServingClientTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Shared and read-only: exported once per process (tests/testutil.py).
    cls.loaded = testutil.tiny_loaded("dolg", export_config=testutil.SMALL_EXPORT_CONFIG)
    cls.image = np.random.default_rng(0).integers(0, 256, [40, 50, 3], dtype=np.uint8)

  def test_rest_body_is_what_serve_encoded_takes(self):
    buffer = io.BytesIO()
    Image.fromarray(self.image).save(buffer, format="PNG")
    body = serving_client.rest_request_body([buffer.getvalue()])
    self.assertEqual(body["signature_name"], "serve_encoded")
    # TF Serving decodes {"b64": ...} into the string tensor.
    images = [base64.b64decode(item["b64"]) for item in body["inputs"]["images"]]
    out = self.loaded.signatures[body["signature_name"]](images=tf.constant(images))
    self.assertEqual(out["global_descriptor"].shape, (1, testutil.TINY_DOLG.embedding_dim))

  def test_grpc_request_matches_serving_default(self):
    request = serving_client.grpc_request("dolg", self.image)
    function = self.loaded.signatures[request.model_spec.signature_name]
    feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    self.assertEqual(set(feed), set(function.structured_input_signature[1]))
    out = function(**feed)
    self.assertAllClose(tf.norm(out["global_descriptor"]), 1.0, atol=1e-5)


if __name__ == "__main__":
  tf.test.main()
