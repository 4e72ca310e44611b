"""Retrieval: evaluation metrics, exact and approximate search, DELG re-ranking.

Modules:
  metrics: revisited mAP and mP@k (as in Radenovic et al.'s revisitop), GLDv2
    retrieval mAP@100 and its CSV readers.
  search: tiled exact search, ScaNN and faiss indices behind one interface,
    recall@k, alpha query expansion and database-side augmentation.
  rerank: DELG local feature matching + RANSAC geometric verification.
  superglobal: SuperGlobal re-ranking of a top-M with global descriptors only
    (top-M descriptor augmentation + max query expansion, Shao et al. 2023).
  perform_retrieval: the evaluation (global search, QE/DBA, distractors,
    optional SuperGlobal and geometric verification) and its binary.
  (The ground truth readers are dolg_tf.data.ground_truth.)
"""
