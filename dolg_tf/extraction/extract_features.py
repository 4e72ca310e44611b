r"""Extracts global descriptors of many images with an exported DOLG/DELG SavedModel.

In the style of DELF's extract_features: the config (protos/dolg.pbtxt) names
the SavedModel, the image pyramid, resizing, scale pooling and PCA.

  # Every image of a list (one path per line; relative to --images_dir if set):
  python extract_features.py --config=protos/dolg.pbtxt \
      --list_images_path=list.txt --output_dir=descriptors
  # Every jpg/jpeg/png/bmp/gif/webp/tif/tiff under a folder, recursively
  # (hidden files and folders, names starting with ".", skipped):
  python extract_features.py --config=protos/dolg.pbtxt --images_dir=images \
      --output_dir=descriptors
  # Revisited Oxford/Paris queries, cropped to their boxes (the protocol):
  python extract_features.py --config=protos/dolg.pbtxt --images_dir=roxford5k/jpg \
      --gnd_path=gnd_roxford5k.pkl --image_set=query --query_crop \
      --output_dir=roxford5k/query
  # ... and the database images (not cropped; use another --output_dir, the
  # query images are database images too):
  ... --gnd_path=gnd_roxford5k.pkl --image_set=index --output_dir=roxford5k/index
  # A million images: sharded .npz output instead of one file per image:
  ... --output_format=shards --shard_size=100000
  # Google Landmarks v2 index images (index.csv's ids, <a>/<b>/<c>/<id>.jpg):
  python extract_features.py --config=protos/dolg.pbtxt --gldv2_csv_path=index.csv \
      --images_dir=gldv2/index --output_dir=gldv2/index_descriptors
  # Batches of equal-size images in one forward (for accelerators; same descriptors):
  ... --batch_size=8
  # Many machines: the same flags on Apache Beam (dolg_tf/extraction/beam_extract.py):
  python -m dolg_tf.extraction.beam_extract --config=... --images_dir=... --output_dir=... \
      --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
  # DELF's DELG command line and config, unchanged (queries are cropped;
  # <images_dir>/<name>.jpg in, <name>.delg_global / .delg_local out):
  python extract_features.py --delf_config_path=r50delg_gldv2clean_config.pbtxt \
      --dataset_file_path=gnd_roxford5k.mat --images_dir=roxford5k/jpg \
      --image_set=query --output_features_dir=roxford5k/query

The input flags are shared with the Beam command (input_flags.py).
--config takes a DolgConfig or a DELF DelfConfig (config_io.load_any_config).
--delf_config_path, --dataset_file_path and --output_features_dir are DELF's
names for --config, --gnd_path (+ --query_crop for queries) and --output_dir;
a flag and its alias with different values are refused.

Outputs go to --output_dir (see dolg_tf/extraction/pipeline.py): per image
`<name><global_descriptor_suffix>` (DatumProto float32 [D]) or
`descriptors-NNNNN.npz` shards + manifest.json; images that cannot be used
(unreadable, more than --max_pixels pixels, a side under 10 px after
resizing, a hidden name in a list) are listed once each in `failures.tsv`.
Re-running skips images already done. Relative paths are taken from
$BUILD_WORKING_DIRECTORY under `bazel run`.

The output folder is created and proven writable, then locked (a second
extraction into it is refused, naming the pid and host of the first), before
the model is loaded. If it fills up or turns read-only mid-run, the run stops
with a one-line error saying so and how many images were written; nothing
half-written remains and the next run extracts the rest.

Exit status: 0 on success, 1 if there was work and no image has a descriptor,
2 on a bad flag, config, model, image list or output folder, or a run stopped
by a full or read-only output folder (one-line message).
"""

import os

from absl import app, flags, logging

from dolg_tf.extraction import input_flags, output_folder, pipeline
from dolg_tf.utils import cli

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags: input_flags' and the run's (a second call is a no-op)."""
  input_flags.define_flags(flag_values)
  if "output_format" in flag_values:
    return
  flags.DEFINE_enum(
    "output_format",
    "per_image",
    ["per_image", "shards"],
    "Output layout.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer("num_threads", 2, "Image decoding threads.", flag_values=flag_values)
  flags.DEFINE_integer("prefetch", 8, "Images decoded ahead of the model.", flag_values=flag_values)
  flags.DEFINE_integer(
    "shard_size",
    100_000,
    "Descriptors per shard with --output_format=shards.",
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "log_interval", 30.0, "Seconds between progress logs.", flag_values=flag_values
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  input_flags.check_run_flags()
  config, model_path, tasks = input_flags.read_inputs()
  if config.use_local_features and FLAGS.output_format != "per_image":
    raise cli.UserError(
      f"{FLAGS.config}: use_local_features: DELG results are written per image only "
      f"(--output_format={FLAGS.output_format})"
    )
  # The output folder is checked and locked before the model loads.
  try:
    created = output_folder.prepare_output_dir(FLAGS.output_dir)
    lock = output_folder.OutputLock(FLAGS.output_dir).acquire()
  except output_folder.OutputError as e:
    raise cli.UserError(str(e)) from e
  started = False
  try:
    try:
      # TF-free start-up: TensorFlow is imported only once the inputs are known to be there.
      from dolg_tf.extraction import extractor as extractor_lib  # noqa: PLC0415

      # DELG configs (use_local_features) get .delg_local + .delg_global files per image.
      extractor = extractor_lib.Extractor(config, FLAGS.config, model_path=model_path)
    except (OSError, ValueError) as e:
      raise cli.UserError(str(e)) from e
    if not tasks:
      logging.warning("no images to extract")
    started = True
    try:
      summary = pipeline.run_extraction(
        extractor,
        tasks,
        FLAGS.output_dir,
        output_format=FLAGS.output_format,
        num_threads=FLAGS.num_threads,
        prefetch=FLAGS.prefetch,
        shard_size=FLAGS.shard_size,
        log_interval=FLAGS.log_interval,
        max_pixels=FLAGS.max_pixels,
        lock=lock,
        batch_size=input_flags.batch_size(),
      )
    except (output_folder.OutputError, ValueError) as e:
      # Bad arguments (before any image is read), or a full / read-only folder.
      raise cli.UserError(str(e)) from e
  finally:
    lock.release()
    if created and not started:
      _remove_if_empty(FLAGS.output_dir)  # The model did not load: no empty folder left.
  print(
    f"done {summary.done}, skipped {summary.skipped}, failed {summary.failed}, "
    f"{summary.seconds:.1f}s -> {FLAGS.output_dir}"
  )
  return summary.exit_code


def _remove_if_empty(folder: str) -> None:
  try:
    os.rmdir(folder)
  except OSError:
    pass


def run():
  """The `dolg-extract` command (and `python extract_features.py`)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
