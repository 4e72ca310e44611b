"""SuperGlobal ablation and bf16 accuracy on the demo's synthetic benchmark (trained DOLG, DELG).

  python benchmarks/superglobal_benchmark.py [--dolg_workdir=runs/demo] \
      [--delg_workdir=runs/demo_delg] [--output_dir=runs/superglobal_ablation]

Needs the demo runs (`dolg-demo`, `dolg-demo --model=delg`). For each model it
extracts the benchmark's global descriptors (the demo's pyramid 1/sqrt(2), 1,
sqrt(2)) with SuperGlobal's test-time options switched from the extraction
config (GeM+ p, Regional-GeM, Scale-GeM as MAX / SCALE_GEM pooling) and from
a re-export with model.relu_up (ReLU-up changes the backbone's activations),
then scores each variant on the revisited protocol, without and with
SuperGlobal re-ranking (M = 400 is the whole 192-image database here).
Prints one table per model (mAP % Easy / Medium / Hard, and ms/query of the
re-ranking); the GeM+ rows sweep p, since "a tuned p" has to be tuned per
network. Features are cached under --output_dir: a rerun only scores.

--bfloat16 (default on) then exports the same checkpoint as trained (float32,
export.fold_batch_norms=false), with the default float32 export (batch norms
folded) and with export.precision=bfloat16 (batch norms folded and not), and
prints the smallest and mean cosine of each one's descriptors to the first's
over every benchmark image, and all mAPs: the accuracy bound of folding and of
a bf16 export on trained weights.
"""

import dataclasses
import os
import sys

import numpy as np
from absl import app, flags, logging
from google.protobuf import text_format

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dolg_tf.export import versions  # noqa: E402
from dolg_tf.extraction import extractor as extractor_lib  # noqa: E402
from dolg_tf.extraction import pipeline, task_sources  # noqa: E402
from dolg_tf.io import config_io, datum_io  # noqa: E402
from dolg_tf.model import superglobal  # noqa: E402
from dolg_tf.retrieval import evaluation as evaluation_lib  # noqa: E402
from dolg_tf.retrieval import retrieval_config  # noqa: E402
from dolg_tf.retrieval import superglobal as superglobal_rerank  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dolg_workdir", "runs/demo", "The DOLG demo run ('' to skip).")
flags.DEFINE_string("delg_workdir", "runs/demo_delg", "The DELG demo run ('' to skip).")
flags.DEFINE_string("output_dir", "runs/superglobal_ablation", "Features and exports.")
flags.DEFINE_list("gem_plus_p", ["2", "4.6", "6", "8"], "GeM+ exponents swept.")
flags.DEFINE_float("scale_gem_p", 10.0, "Exponent of the finite-p Scale-GeM row.")
flags.DEFINE_bool("superglobal", True, "Run the SuperGlobal ablation.")
flags.DEFINE_bool("bfloat16", True, "Compare a bfloat16 export with float32 (cosine, mAP).")

ScalePooling = config_io.DolgConfig.GlobalConfig
PROTOCOLS = ("easy", "medium", "hard")
GLOBAL_SCALES = (0.70710677, 1.0, 1.4142135)


@dataclasses.dataclass(frozen=True)
class Variant:
  label: str
  gem_plus_p: float | None = None
  regional_gem_weight: float | None = None
  scale_pooling: int = ScalePooling.AVERAGE
  relu_up: bool = False


def variants(gem_plus_ps, scale_gem_p):
  rows = [Variant("baseline (trained p, average over scales)")]
  rows += [Variant(f"GeM+ p={p:g}", gem_plus_p=p) for p in gem_plus_ps]
  rows += [
    Variant(
      f"Regional-GeM (w {superglobal.REFERENCE_REGIONAL_GEM_WEIGHT:g}, p 2.5, 5x5)",
      regional_gem_weight=superglobal.REFERENCE_REGIONAL_GEM_WEIGHT,
    ),
    Variant("Scale-GeM p=inf (MAX)", scale_pooling=ScalePooling.MAX),
    Variant(f"Scale-GeM p={scale_gem_p:g} (SCALE_GEM)", scale_pooling=ScalePooling.SCALE_GEM),
    Variant(f"ReLU-up {superglobal.REFERENCE_RELU_UP:g}", relu_up=True),
    Variant(
      "all four (GeM+ 4.6, R-GeM, Scale-GeM inf, ReLU-up)",
      gem_plus_p=superglobal.REFERENCE_GEM_PLUS_P,
      regional_gem_weight=superglobal.REFERENCE_REGIONAL_GEM_WEIGHT,
      scale_pooling=ScalePooling.MAX,
      relu_up=True,
    ),
  ]
  return rows


def export_once(workdir, base, overrides=None):
  """The demo's latest checkpoint exported (once) to `base`, with config overrides."""
  existing = sorted(int(v) for v in os.listdir(base) if v.isdigit()) if os.path.isdir(base) else []
  if existing:
    return os.path.join(base, str(existing[-1]))
  return versions.export_from_checkpoint(workdir, export_base=base, export_overrides=overrides)


def extraction_config(workdir, variant, model_path, path, scale_gem_p):
  """The demo's extraction config, global only on GLOBAL_SCALES, with the variant's options."""
  config = config_io.load_dolg_config(os.path.join(workdir, "trained.pbtxt"))
  config.model_path = os.path.abspath(model_path)
  config.use_local_features = False
  del config.image_scales[:]
  config.image_scales.extend(GLOBAL_SCALES)
  global_config = config.global_config
  del global_config.image_scales_ind[:]
  global_config.scale_pooling = variant.scale_pooling
  global_config.gem_p = scale_gem_p
  if variant.gem_plus_p is not None:
    global_config.gem_plus_p = variant.gem_plus_p
  if variant.regional_gem_weight is not None:
    global_config.regional_gem_weight = variant.regional_gem_weight
  with open(path, "w") as f:
    f.write(text_format.MessageToString(config))
  return config


def extract(workdir, variant, model_path, folder, images, scale_gem_p):
  """(config, features folder) of the benchmark images extracted with a variant's config."""
  config_path = os.path.join(folder, "config.pbtxt")
  config = extraction_config(workdir, variant, model_path, config_path, scale_gem_p)
  features = os.path.join(folder, "features")
  summary = pipeline.run_extraction(extractor_lib.Extractor(config, config_path), images, features)
  if summary.failed:
    raise RuntimeError(f"{summary.failed} images failed: {features}/failures.tsv")
  return config, features


def ablate(name, workdir, output_dir):
  """Rows (label, {protocol: mAP}, {protocol: mAP after re-ranking}, ms/query) of one model."""
  benchmark_dir = os.path.join(workdir, "benchmark")
  gnd_path = os.path.join(benchmark_dir, "gnd_synthetic.pkl")
  images = task_sources.tasks_from_paths(
    task_sources.list_images(os.path.join(benchmark_dir, "jpg"))
  )
  # Re-exported by this version of dolg_tf: older exports lack the GeM+ / Regional-GeM variables.
  trained_export = export_once(workdir, os.path.join(output_dir, name, "export"))
  relu_up = {"model": {"relu_up": superglobal.REFERENCE_RELU_UP}}
  rows = []
  for index, variant in enumerate(
    variants([float(p) for p in FLAGS.gem_plus_p], FLAGS.scale_gem_p)
  ):
    folder = os.path.join(output_dir, name, f"variant_{index:02d}")
    os.makedirs(folder, exist_ok=True)
    model_path = trained_export
    if variant.relu_up:
      model_path = export_once(workdir, os.path.join(output_dir, name, "relu_up_export"), relu_up)
    config, features = extract(workdir, variant, model_path, folder, images, FLAGS.scale_gem_p)
    suffix = config.global_descriptor_suffix
    plain = evaluation_lib.evaluate(
      gnd_path, features, features, config=retrieval_config.RetrievalConfig(suffix=suffix)
    )
    reranked = evaluation_lib.evaluate(
      gnd_path,
      features,
      features,
      config=retrieval_config.RetrievalConfig(
        suffix=suffix,
        superglobal=superglobal_rerank.SuperGlobalConfig(m=superglobal_rerank.DEFAULT_M),
      ),
    )
    rows.append((variant.label, plain.results, reranked.results, reranked.superglobal_ms_per_query))
  return rows


# Exports compared by --bfloat16; the first is the reference (the Keras graph as trained).
PRECISION_EXPORTS = {
  "float32 unfolded": {"precision": "float32", "fold_batch_norms": False},
  "float32": {"precision": "float32"},
  "bfloat16": {"precision": "bfloat16"},
  "bfloat16 unfolded": {"precision": "bfloat16", "fold_batch_norms": False},
}


def precision_rows(name, workdir, output_dir):
  """The exports of PRECISION_EXPORTS of the trained demo: descriptor cosines and mAP."""
  benchmark_dir = os.path.join(workdir, "benchmark")
  gnd_path = os.path.join(benchmark_dir, "gnd_synthetic.pkl")
  images = task_sources.tasks_from_paths(
    task_sources.list_images(os.path.join(benchmark_dir, "jpg"))
  )
  descriptors, results = {}, {}
  for label, export in PRECISION_EXPORTS.items():
    key = label.replace(" ", "_")
    base = os.path.join(output_dir, name, f"export_{key}")
    model_path = export_once(workdir, base, {"export": export})
    folder = os.path.join(output_dir, name, f"precision_{key}")
    os.makedirs(folder, exist_ok=True)
    config, features = extract(workdir, Variant(key), model_path, folder, images, 3.0)
    suffix = config.global_descriptor_suffix
    results[label] = evaluation_lib.evaluate(
      gnd_path, features, features, config=retrieval_config.RetrievalConfig(suffix=suffix)
    )
    descriptors[label] = {
      task.image_id: datum_io.read_from_file(os.path.join(features, task.image_id + suffix))
      for task in images
    }
  reference, *others = PRECISION_EXPORTS
  print(f"\n=== exports of the trained {name.upper()} demo ({len(images)} images) ===")
  for label in others:
    cosines = np.array(
      [float(np.dot(descriptors[reference][n], descriptors[label][n])) for n in descriptors[label]]
    )
    print(
      f"{label} vs {reference}: descriptor cosine min {cosines.min():.6f}, "
      f"mean {cosines.mean():.6f}"
    )
  for label, evaluation in results.items():
    maps = " / ".join(f"{100 * evaluation.results[p].mean_ap:.2f}" for p in PROTOCOLS)
    print(f"{label:<17} mAP E / M / H {maps}")


def print_table(name, rows):
  print(f"\n=== SuperGlobal ablation, trained {name.upper()} demo (mAP %, E / M / H) ===")
  header = f"{'variant':<52} {'global only':>20}   {'+ SuperGlobal re-ranking':>26}"
  print(header)
  for label, plain, reranked, ms in rows:
    a = " ".join(f"{100 * plain[p].mean_ap:6.2f}" for p in ("easy", "medium", "hard"))
    b = " ".join(f"{100 * reranked[p].mean_ap:6.2f}" for p in ("easy", "medium", "hard"))
    print(f"{label:<52} {a:>20}   {b:>20} ({ms:.2f} ms/q)")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  for name, workdir in (("dolg", FLAGS.dolg_workdir), ("delg", FLAGS.delg_workdir)):
    if not workdir:
      continue
    if not os.path.isdir(os.path.join(workdir, "benchmark")):
      sys.exit(f"--{name}_workdir: {workdir} has no demo benchmark (run dolg-demo first)")
    output_dir = os.path.abspath(FLAGS.output_dir)
    if FLAGS.superglobal:
      print_table(name, ablate(name, workdir, output_dir))
    if FLAGS.bfloat16:
      precision_rows(name, workdir, output_dir)


if __name__ == "__main__":
  app.run(main)
