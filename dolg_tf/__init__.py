"""dolg_tf: DOLG and DELG for instance-level image retrieval in TensorFlow.

Importing the package before TensorFlow sets two console defaults (this module
runs before any `dolg_tf.*` module imports TensorFlow): TF's C++ start-up lines
(CUDA factory registration "E" lines, "could not find cuda drivers", CPU feature
notes) are hidden with TF_CPP_MIN_LOG_LEVEL=3, and google.api_core's
Python-version FutureWarning is ignored. A TF_CPP_MIN_LOG_LEVEL already in the
environment, `--verbose` on a command line, or a process that imported
TensorFlow first keeps TensorFlow's own behaviour. Keras is never configured
here: dolg_tf takes its own Keras 2 (dolg_tf/keras_api.py).
"""

import os
import sys
import warnings

VERBOSE = any(
  arg in ("--verbose", "--verbose=true", "--verbose=1", "--verbose=True") for arg in sys.argv[1:]
)
if not VERBOSE:
  if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.(api_core|auth)")
