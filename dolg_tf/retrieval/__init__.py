"""Retrieval: ground truth, evaluation metrics, exact and approximate search.

Modules:
  ground_truth: Revisited Oxford / Paris ground truth (.pkl and .mat) and the
    easy / medium / hard protocols.
  metrics: revisited mAP and mP@k (as in Radenovic et al.'s revisitop), GLDv2
    retrieval mAP@100 and its CSV readers.
  search: tiled exact search, ScaNN and faiss indices behind one interface,
    recall@k, alpha query expansion and database-side augmentation.
"""
