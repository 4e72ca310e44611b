"""dolg_tf: DOLG and DELG for instance-level image retrieval in TensorFlow."""
