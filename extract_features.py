"""`python extract_features.py --config=protos/dolg.pbtxt ...`, as DELF has it.

A thin entry point: the binary is dolg_tf/extraction/extract_features.py (also
installed as `dolg-extract`); run it with --help for the flags.
"""

from dolg_tf.extraction import extract_features

if __name__ == "__main__":
  extract_features.run()
