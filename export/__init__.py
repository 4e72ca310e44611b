"""SavedModel export of dolg_tf models for extraction and TF Serving."""
