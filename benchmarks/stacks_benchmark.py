"""Speed of the two supported stacks, measured in one run, with ratios to the official code.

  python benchmarks/stacks_benchmark.py       # after `make cross-stack` (sets both stacks up)

For --rounds rounds, the stacks' order alternating from round to round, this runs
in each stack's virtualenv:
  * benchmarks/extraction_benchmark.py: DOLG-R101 at 512x512, one scale, the whole
    extraction pipeline in fp32 and bf16 (and, where torch is installed, the official
    DOLG structure's forward in PyTorch on the same images);
  * benchmarks/training_benchmark.py --compare_official: a training step of R50, batch 8
    at 224 px, 1000 classes, fp32 and (where the CPU has native bf16) mixed_bfloat16, fed
    by tf.data (and the official structure's PyTorch step where torch is installed).
Their own lines are printed as they come, then a table of medians. The PyTorch rows
come from the stack that has torch (on this machine kind only the card's: the CPU
wheel on disk is for Python 3.11), measured in the same run, so every ratio divides
figures of this one run.
"""

import collections
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("card_python", os.path.join(ROOT, ".venv", "bin", "python"), "Card stack.")
flags.DEFINE_string(
  "current_python", os.path.join(ROOT, ".venv-current", "bin", "python"), "Current stack."
)
flags.DEFINE_integer("rounds", 2, "Rounds; each runs both benchmarks on both stacks.")
flags.DEFINE_integer("num_images", 8, "Images of each extraction row.")
flags.DEFINE_integer("train_steps", 4, "Steps of each training row per round.")
flags.DEFINE_string("workdir", None, "Folder for the exports (default: a temp folder).")

# (row, regular expression on a benchmark's output line; group 1 is img/s).
ROWS = [
  ("extract fp32", r"^\[fp32\] DOLG-R\d+ .*whole pipeline ([\d.]+) img/s"),
  ("extract bf16", r"^\[bf16\] DOLG-R\d+ .*whole pipeline ([\d.]+) img/s"),
  ("extract PyTorch fp32", r"^\[official\] DOLG-R\d+ structure in PyTorch .*: ([\d.]+) img/s"),
  ("train fp32", r"^\s+dolg_tf fp32, tf.data input\s+([\d.]+) img/s"),
  ("train bf16", r"^\s+dolg_tf mixed_bfloat16, tf.data input\s+([\d.]+) img/s"),
  ("train PyTorch fp32", r"^\s+official DOLG structure \(PyTorch\) fp32\s+([\d.]+) img/s"),
]


def _run(python: str, *args: str) -> str:
  result = subprocess.run(
    [python, *args], capture_output=True, text=True, cwd=ROOT, timeout=3600, check=False
  )
  if result.returncode != 0:
    raise RuntimeError(f"{python} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
  return result.stdout


def _versions(python: str) -> str:
  return _run(
    python,
    "-c",
    "import sys, importlib.metadata as m, tensorflow as tf; from dolg_tf import keras_api; "
    "k = 'keras' if keras_api.KERAS_FROM_TF else 'tf_keras'; "
    "print(f'Python {sys.version.split()[0]}, TF {tf.__version__}, {k} {m.version(k)}')",
  ).strip()


def main(argv):
  del argv  # unused
  stacks = {"card": FLAGS.card_python, "current": FLAGS.current_python}
  for name, python in stacks.items():
    if not os.path.exists(python):
      sys.exit(f"stacks_benchmark: error: no {name} stack at {python} (make cross-stack)")
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="stacks_benchmark_")
  versions = {name: _versions(python) for name, python in stacks.items()}
  samples = collections.defaultdict(list)
  for round_index in range(FLAGS.rounds):
    order = list(stacks) if round_index % 2 == 0 else list(reversed(stacks))
    for name in order:
      python = stacks[name]
      print(f"--- round {round_index + 1}, {name} stack: {versions[name]}", flush=True)
      extraction = _run(
        python,
        "benchmarks/extraction_benchmark.py",
        f"--num_images={FLAGS.num_images}",
        "--memory_run=false",
        f"--workdir={os.path.join(workdir, name)}",
      )
      training = _run(
        python,
        "benchmarks/training_benchmark.py",
        "--compare_official",
        "--compare_rounds=1",
        f"--compare_steps={FLAGS.train_steps}",
      )
      for line in (extraction + training).splitlines():
        print(f"  {line}")
        for row, pattern in ROWS:
          match = re.search(pattern, line)
          if match:
            samples[(name, row)].append(float(match.group(1)))
      sys.stdout.flush()

  median = {key: float(np.median(values)) for key, values in samples.items()}
  torch_extract = next((median[k] for k in median if k[1] == "extract PyTorch fp32"), None)
  torch_train = next((median[k] for k in median if k[1] == "train PyTorch fp32"), None)
  print(f"\nmedians of {FLAGS.rounds} rounds, img/s (ratio to the official structure in PyTorch)")
  print(f"{'':<16}" + "".join(f"{name:>24}" for name in stacks))
  for row, _ in ROWS:
    cells = []
    for name in stacks:
      value = median.get((name, row))
      reference = torch_extract if row.startswith("extract") else torch_train
      if value is None:
        cells.append(f"{'-':>24}")
      elif reference and "PyTorch" not in row:
        cells.append(f"{value:>14.2f} ({value / reference:.2f}x)")
      else:
        cells.append(f"{value:>24.2f}")
    print(f"{row:<16}" + "".join(cells))
  for row in ("extract fp32", "extract bf16", "train fp32", "train bf16"):
    card, current = median.get(("card", row)), median.get(("current", row))
    if card and current:
      print(f"current / card, {row}: {current / card:.2f}x")
  for name, version in versions.items():
    print(f"{name}: {version}")


if __name__ == "__main__":
  app.run(main)
