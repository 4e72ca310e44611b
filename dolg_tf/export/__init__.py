"""SavedModel export in TF Serving's layout, its signature names and a serving client."""
