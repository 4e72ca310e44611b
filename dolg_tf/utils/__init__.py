"""Project-wide helpers that depend on nothing else of dolg_tf (and not on TensorFlow)."""
