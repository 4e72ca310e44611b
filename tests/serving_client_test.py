"""Tests for export/serving_client.py requests against an exported model."""

import base64
import http.server
import io
import os
import socket
import threading

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


def _closed_port() -> int:
  """A localhost port nothing listens on (bound once, then closed)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class NoServerTest(tf.test.TestCase):
  """No TF Serving answering: one line naming the server address, exit status 2."""

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.image = os.path.join(self.dir, "image.png")
    Image.new("RGB", (8, 6), (10, 20, 30)).save(self.image)

  def _run(self, *args):
    return testutil.run_module("dolg_tf.export.serving_client", *args, cwd=self.dir, timeout=120)

  def _assert_one_line_error(self, result, prefix):
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = result.stderr.strip().splitlines()
    self.assertLen(lines, 1, result.stderr)
    self.assertStartsWith(lines[0], f"serving_client: error: {prefix}")

  def test_rest_connection_refused(self):
    server = f"127.0.0.1:{_closed_port()}"
    self._assert_one_line_error(
      self._run(f"--server={server}", "image.png"),
      f"{server}: no TF Serving REST server answering (",
    )

  def test_grpc_connection_refused(self):
    server = f"127.0.0.1:{_closed_port()}"
    self._assert_one_line_error(
      self._run("--mode=grpc", "--timeout=20", f"--server={server}", "image.png"),
      f"{server}: no TF Serving gRPC server answering (",
    )

  def test_missing_image_file(self):
    self._assert_one_line_error(self._run("nope.png"), "nope.png: no such image file")

  def test_rest_timeout_names_the_server(self):
    with socket.socket() as listener:  # accepts connections (backlog), never answers
      listener.bind(("127.0.0.1", 0))
      listener.listen(1)
      server = f"127.0.0.1:{listener.getsockname()[1]}"
      with self.assertRaisesRegex(
        serving_client.ServerError, f"^{server}: no answer within 0.2s \\(REST, http://{server}/"
      ):
        serving_client.predict_rest(server, "dolg", [b"x"], timeout=0.2)

  def test_rest_http_error_and_bad_answer_name_the_url(self):
    answers = {"/v1/models/missing:predict": (404, b'{"error": "Servable not found"}')}
    answers["/v1/models/odd:predict"] = (200, b"not json")

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        code, body = answers[self.path]
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        del args

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    self.addCleanup(httpd.server_close)
    self.addCleanup(httpd.shutdown)
    server = f"127.0.0.1:{httpd.server_address[1]}"
    with self.assertRaisesRegex(
      serving_client.ServerError,
      f"^http://{server}/v1/models/missing:predict: HTTP 404: .*Servable not found",
    ):
      serving_client.predict_rest(server, "missing", [b"x"], timeout=10)
    with self.assertRaisesRegex(
      serving_client.ServerError, f"^http://{server}/v1/models/odd:predict: not a predict response"
    ):
      serving_client.predict_rest(server, "odd", [b"x"], timeout=10)


if __name__ == "__main__":
  tf.test.main()
