"""Keras layers and models of DOLG and DELG."""
