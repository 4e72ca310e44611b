"""Minimal TF Serving clients for an exported dolg_tf model (REST and gRPC).

  # REST: batch of encoded images -> descriptors (signature serve_encoded)
  python -m export.serving_client --mode=rest --server=localhost:8501 --model=dolg img1.jpg img2.jpg
  # gRPC: one image through the DELF-style serving_default signature
  python -m export.serving_client --mode=grpc --server=localhost:8500 --model=dolg img.jpg

Prints one line per image: the file name and the first values of its
L2-normalised descriptor (and writes them with --output_npy, atomically).

The server's reply is checked before anything is printed or written: one
finite descriptor per image sent (REST: a [N, D] `global_descriptor` for N
images; gRPC: [D]), at most MAX_REPLY_BYTES_PER_IMAGE per image (REST). A
reply of another shape or row count, or with a NaN/Inf value, is one line
naming the server (exit status 2) and nothing is written.
"""

import base64
import http.client
import io
import json
import urllib.error
import urllib.request

import numpy as np
from absl import app, flags

from dolg_tf.io import savedmodel_contract
from dolg_tf.utils import cli
from dolg_tf.utils import files as file_utils

FLAGS = flags.FLAGS
# Seconds a request waits for the server's answer (--timeout's default).
DEFAULT_TIMEOUT_SECONDS = 60.0
# The REST reply read at most: this much per image sent, plus REPLY_BYTES_BASE.
MAX_REPLY_BYTES_PER_IMAGE = 4 << 20
REPLY_BYTES_BASE = 1 << 20


def rest_request_body(image_bytes_list: list[bytes]) -> dict:
  """The TF Serving REST predict body for the `serve_encoded` signature."""
  return {
    "signature_name": savedmodel_contract.SERVE_ENCODED,
    "inputs": {
      savedmodel_contract.INPUT_ENCODED_IMAGES: [
        {"b64": base64.b64encode(b).decode("ascii")} for b in image_bytes_list
      ]
    },
  }


class ServerError(OSError):
  """No TF Serving answer (or a refusal) from a server; the message names its address."""


def _error_text(error: BaseException) -> str:
  return " ".join(str(error).split())[:300] or type(error).__name__


def check_descriptors(where: str, descriptors: np.ndarray, expected_rows: int) -> np.ndarray:
  """`descriptors` if it is [expected_rows, D] (D >= 1) and finite, as float32.

  Raises:
    ServerError: naming `where` (the server or URL) and the shapes or rows.
  """
  shape = list(descriptors.shape)
  if descriptors.ndim != 2 or not descriptors.shape[1]:
    raise ServerError(
      f"{where}: reply has shape {shape}, expected [{expected_rows}, D] "
      "(one descriptor per image sent)"
    )
  if descriptors.shape[0] != expected_rows:
    raise ServerError(
      f"{where}: reply has {descriptors.shape[0]} descriptors for {expected_rows} images sent "
      f"(shape {shape})"
    )
  bad = np.flatnonzero(~np.isfinite(descriptors).all(axis=1))
  if bad.size:
    raise ServerError(
      f"{where}: non-finite (NaN/Inf) descriptor for image {int(bad[0]) + 1} of {expected_rows}"
      + (f" and {bad.size - 1} more" if bad.size > 1 else "")
    )
  return descriptors.astype(np.float32, copy=False)


def predict_rest(
  server: str,
  model: str,
  image_bytes_list: list[bytes],
  timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> np.ndarray:
  """Descriptors [N, D] of encoded images from TF Serving's REST predict API.

  Args:
    server: host:port of the REST API.
    model: the model name in TF Serving.
    image_bytes_list: encoded images (JPEG, PNG, ...).
    timeout: seconds to wait for the answer.

  Raises:
    ServerError: naming the server address, if it does not answer (refused
      connection, timeout), answers with an HTTP error or without outputs, or
      with a reply that is too large, of another shape than [N, D] for N
      images, or not finite (check_descriptors).
  """
  limit = REPLY_BYTES_BASE + MAX_REPLY_BYTES_PER_IMAGE * len(image_bytes_list)
  url = f"http://{server}/v1/models/{model}:predict"
  request = urllib.request.Request(
    url,
    data=json.dumps(rest_request_body(image_bytes_list)).encode("utf-8"),
    headers={"Content-Type": "application/json"},
  )
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      body = response.read(limit + 1)
  except urllib.error.HTTPError as e:  # the server answered with an error
    detail = _error_text(e.read().decode("utf-8", "replace") or e.reason)
    raise ServerError(f"{url}: HTTP {e.code}: {detail}") from e
  except urllib.error.URLError as e:
    reason = e.reason
    if isinstance(reason, TimeoutError):
      raise ServerError(f"{server}: no answer within {timeout:g}s (REST, {url})") from e
    raise ServerError(
      f"{server}: no TF Serving REST server answering ({_error_text(reason)})"
    ) from e
  except TimeoutError as e:
    raise ServerError(f"{server}: no answer within {timeout:g}s (REST, {url})") from e
  except (OSError, http.client.HTTPException) as e:
    raise ServerError(f"{server}: REST request failed ({_error_text(e)})") from e
  if len(body) > limit:
    raise ServerError(
      f"{url}: reply larger than {limit} bytes for {len(image_bytes_list)} images; refused"
    )
  try:
    outputs = json.loads(body)["outputs"]
    descriptors = np.asarray(
      outputs[savedmodel_contract.GLOBAL_DESCRIPTOR] if isinstance(outputs, dict) else outputs,
      np.float32,
    )
  except (ValueError, KeyError, TypeError, OverflowError) as e:
    raise ServerError(f"{url}: not a predict response with outputs ({_error_text(e)})") from e
  return check_descriptors(url, descriptors, len(image_bytes_list))


def grpc_request(model: str, image: np.ndarray, scales=(0.7071, 1.0, 1.4142)):
  """A PredictRequest for the DELF-style `serving_default` signature."""
  # Optional deps: gRPC mode only (the REST client needs neither TF nor tensorflow_serving).
  import tensorflow as tf  # noqa: PLC0415
  from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415

  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = savedmodel_contract.SERVING_DEFAULT
  request.inputs[savedmodel_contract.INPUT_IMAGE].CopyFrom(
    tf.make_tensor_proto(image.astype(np.uint8))
  )
  request.inputs[savedmodel_contract.INPUT_SCALES].CopyFrom(
    tf.make_tensor_proto(np.asarray(scales, np.float32))
  )
  request.inputs[savedmodel_contract.INPUT_GLOBAL_SCALES_IND].CopyFrom(
    tf.make_tensor_proto(np.arange(len(scales), dtype=np.int32))
  )
  return request


def predict_grpc(
  server: str, model: str, image: np.ndarray, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> np.ndarray:
  """The descriptor [1, D] of a decoded image from TF Serving's gRPC Predict.

  Raises:
    ServerError: naming the server address, if it does not answer
      (unavailable, deadline exceeded), refuses the request, or replies
      without a finite [D] `global_descriptor`.
  """
  # Optional deps: gRPC mode only.
  import grpc  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: PLC0415

  try:
    with grpc.insecure_channel(server) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      response = stub.Predict(grpc_request(model, image), timeout)
  except grpc.RpcError as e:
    code = e.code() if hasattr(e, "code") else None
    detail = _error_text(e.details() if hasattr(e, "details") else e)
    if code == grpc.StatusCode.UNAVAILABLE:
      raise ServerError(f"{server}: no TF Serving gRPC server answering ({detail})") from e
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
      raise ServerError(f"{server}: no answer within {timeout:g}s (gRPC)") from e
    name = code.name if code is not None else "error"
    raise ServerError(f"{server}: gRPC Predict failed ({name}: {detail})") from e
  if savedmodel_contract.GLOBAL_DESCRIPTOR not in response.outputs:
    raise ServerError(
      f"{server}: gRPC reply without {savedmodel_contract.GLOBAL_DESCRIPTOR!r} "
      f"(outputs: {sorted(response.outputs)})"
    )
  try:
    descriptor = np.asarray(
      tf.make_ndarray(response.outputs[savedmodel_contract.GLOBAL_DESCRIPTOR])
    )
    descriptor = descriptor.astype(np.float32)
  except (ValueError, TypeError) as e:
    raise ServerError(
      f"{server}: unreadable gRPC {savedmodel_contract.GLOBAL_DESCRIPTOR} ({e})"
    ) from e
  if descriptor.ndim != 1:
    raise ServerError(
      f"{server}: gRPC reply has shape {list(descriptor.shape)}, expected [D] (one image sent)"
    )
  return check_descriptors(server, descriptor[None], 1)


def _read_image_file(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError as e:
    raise cli.UserError(f"{path}: no such image file") from e
  except OSError as e:
    raise cli.UserError(f"{path}: cannot read ({e.strerror or e})") from e


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("give image files")
  contents = [_read_image_file(path) for path in paths]
  try:
    if FLAGS.mode == "rest":
      descriptors = predict_rest(FLAGS.server, FLAGS.model, contents, FLAGS.timeout)
    else:
      # Decoding is needed by the gRPC mode only (REST sends the encoded bytes).
      from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

      images = []
      for path, data in zip(paths, contents):
        try:
          images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        except (UnidentifiedImageError, OSError) as e:
          raise cli.UserError(f"{path}: not a readable image ({_error_text(e)})") from e
      descriptors = np.concatenate(
        [predict_grpc(FLAGS.server, FLAGS.model, image, FLAGS.timeout) for image in images]
      )
  except ServerError as e:
    raise cli.UserError(str(e)) from e
  # Each predict_* checked its reply; the rows are the images, in order.
  for path, descriptor in zip(paths, descriptors, strict=True):
    print(f"{path}: dim {descriptor.size}, {np.array2string(descriptor[:4], precision=4)} ...")
  if FLAGS.output_npy:
    # np.save's name: ".npy" is added unless given.
    path = FLAGS.output_npy if FLAGS.output_npy.endswith(".npy") else FLAGS.output_npy + ".npy"
    buffer = io.BytesIO()
    np.save(buffer, descriptors)
    try:
      file_utils.atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
      raise cli.UserError(f"--output_npy: {e}") from e


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags (a second call is a no-op)."""
  if "mode" in flag_values:
    return
  flags.DEFINE_enum("mode", "rest", ["rest", "grpc"], "TF Serving API.", flag_values=flag_values)
  flags.DEFINE_string(
    "server", "localhost:8501", "host:port (REST 8501, gRPC 8500).", flag_values=flag_values
  )
  flags.DEFINE_string("model", "dolg", "Model name in TF Serving.", flag_values=flag_values)
  flags.DEFINE_float("timeout", DEFAULT_TIMEOUT_SECONDS, "Seconds.", flag_values=flag_values)
  flags.DEFINE_string(
    "output_npy", "", "Optional .npy file for the descriptors.", flag_values=flag_values
  )


def run():
  """The `dolg-serving-client` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
