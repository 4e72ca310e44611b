"""`python export/export_model.py --logdir=runs/demo`: exports a training run for TF Serving.

A thin entry point: the binary is dolg_tf/export/export_model.py (also
installed as `dolg-export`); run it with --help for the flags.
"""

from dolg_tf.export import export_model

if __name__ == "__main__":
  export_model.run()
