"""`python export/serving_client.py image.jpg`: queries a TF Serving deployment of an export.

A thin entry point: the binary is dolg_tf/export/serving_client.py (also
installed as `dolg-serving-client`); run it with --help for the flags.
"""

from dolg_tf.export import serving_client

if __name__ == "__main__":
  serving_client.run()
