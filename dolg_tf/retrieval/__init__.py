"""Retrieval: evaluation metrics, exact and approximate search, DELG re-ranking.

Modules:
  metrics: revisited mAP and mP@k (as in Radenovic et al.'s revisitop), GLDv2
    retrieval mAP@100 and its CSV readers.
  exact_search: tiled exact top-k by inner product (the result format of every search).
  indexes: ScaNN and faiss indexes behind one interface (search_index: the
    interface, saved folders and the exact index; scann_index, faiss_indexes:
    the backends), recall@k.
  query_expansion: alpha query expansion and database-side augmentation.
  geometric_verification: DELG local feature matching + RANSAC for two images,
    and its settings.
  rerank: re-ranking the top of each ranking by verified inliers (per protocol,
    junk and distractors as DELF).
  superglobal: SuperGlobal re-ranking of a top-M with global descriptors only
    (top-M descriptor augmentation + max query expansion, Shao et al. 2023).
  retrieval_config: the settings of one evaluation (expansion, SuperGlobal,
    geometric verification) in one object, and the flags generated from it.
  evaluation: one evaluation (global search, QE/DBA, distractors, optional
    SuperGlobal and geometric verification) and its metrics files.
  perform_retrieval: the dolg-retrieve command (DELF's name) over evaluation;
    its --report_dir draws with dolg_tf.visualization, so the import test
    ranks it with the other commands.
  (The ground truth readers are dolg_tf.data.ground_truth.)
"""
