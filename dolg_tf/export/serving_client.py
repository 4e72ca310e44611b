"""Minimal TF Serving clients for an exported dolg_tf model (REST and gRPC).

  # REST: batch of encoded images -> descriptors (signature serve_encoded)
  python -m export.serving_client --mode=rest --server=localhost:8501 --model=dolg img1.jpg img2.jpg
  # gRPC: one image through the DELF-style serving_default signature
  python -m export.serving_client --mode=grpc --server=localhost:8500 --model=dolg img.jpg

Prints one line per image: the file name and the first values of its
L2-normalised descriptor (and writes them with --output_npy).
"""

import base64
import json
import urllib.request

import numpy as np
from absl import app, flags

from dolg_tf.export import signatures
from dolg_tf.utils import cli

FLAGS = flags.FLAGS


def rest_request_body(image_bytes_list: list[bytes]) -> dict:
  """The TF Serving REST predict body for the `serve_encoded` signature."""
  return {
    "signature_name": signatures.SERVE_ENCODED,
    "inputs": {
      signatures.INPUT_ENCODED_IMAGES: [
        {"b64": base64.b64encode(b).decode("ascii")} for b in image_bytes_list
      ]
    },
  }


def predict_rest(server: str, model: str, image_bytes_list: list[bytes]) -> np.ndarray:
  request = urllib.request.Request(
    f"http://{server}/v1/models/{model}:predict",
    data=json.dumps(rest_request_body(image_bytes_list)).encode("utf-8"),
    headers={"Content-Type": "application/json"},
  )
  with urllib.request.urlopen(request, timeout=FLAGS.timeout) as response:
    outputs = json.loads(response.read())["outputs"]
  return np.asarray(
    outputs[signatures.GLOBAL_DESCRIPTOR] if isinstance(outputs, dict) else outputs, np.float32
  )


def grpc_request(model: str, image: np.ndarray, scales=(0.7071, 1.0, 1.4142)):
  """A PredictRequest for the DELF-style `serving_default` signature."""
  # Optional deps: gRPC mode only (the REST client needs neither TF nor tensorflow_serving).
  import tensorflow as tf  # noqa: PLC0415
  from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415

  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = signatures.SERVING_DEFAULT
  request.inputs[signatures.INPUT_IMAGE].CopyFrom(tf.make_tensor_proto(image.astype(np.uint8)))
  request.inputs[signatures.INPUT_SCALES].CopyFrom(
    tf.make_tensor_proto(np.asarray(scales, np.float32))
  )
  request.inputs[signatures.INPUT_GLOBAL_SCALES_IND].CopyFrom(
    tf.make_tensor_proto(np.arange(len(scales), dtype=np.int32))
  )
  return request


def predict_grpc(server: str, model: str, image: np.ndarray) -> np.ndarray:
  # Optional deps: gRPC mode only.
  import grpc  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: PLC0415

  with grpc.insecure_channel(server) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(grpc_request(model, image), FLAGS.timeout)
  return tf.make_ndarray(response.outputs[signatures.GLOBAL_DESCRIPTOR])[None]


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("give image files")
  if FLAGS.mode == "rest":
    contents = []
    for path in paths:
      with open(path, "rb") as f:
        contents.append(f.read())
    descriptors = predict_rest(FLAGS.server, FLAGS.model, contents)
  else:
    # Decoding is needed by the gRPC mode only (REST sends the encoded bytes).
    from PIL import Image  # noqa: PLC0415

    descriptors = np.concatenate(
      [
        predict_grpc(FLAGS.server, FLAGS.model, np.asarray(Image.open(p).convert("RGB")))
        for p in paths
      ]
    )
  for path, descriptor in zip(paths, descriptors):
    print(f"{path}: dim {descriptor.size}, {np.array2string(descriptor[:4], precision=4)} ...")
  if FLAGS.output_npy:
    np.save(FLAGS.output_npy, descriptors)


def define_flags():
  flags.DEFINE_enum("mode", "rest", ["rest", "grpc"], "TF Serving API.")
  flags.DEFINE_string("server", "localhost:8501", "host:port (REST 8501, gRPC 8500).")
  flags.DEFINE_string("model", "dolg", "Model name in TF Serving.")
  flags.DEFINE_float("timeout", 60.0, "Seconds.")
  flags.DEFINE_string("output_npy", "", "Optional .npy file for the descriptors.")


def run():
  """The `dolg-serving-client` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
