"""k-NN scores: predictions equal scikit-learn's KNeighborsClassifier; chunking and batching change nothing."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from jaxcls.core.errors import ConfigError, DataError
from jaxcls.evaluation import knn


def _random_problem(seed, n=300, q=77, d=6, num_classes=5):
  rng = np.random.default_rng(seed)
  train = rng.normal(size=(n, d)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=n)
  queries = rng.normal(size=(q, d)).astype(np.float32)
  return train, labels, queries


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_predictions_match_sklearn(metric, k):
  train, labels, queries = _random_problem(seed=k)
  scores = knn.knn_scores(train, labels, queries, k=k, num_classes=5, metric=metric, batch_size=32)
  assert scores.shape == (77, 5)
  np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-6)
  reference = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(train, labels)
  np.testing.assert_array_equal(scores.argmax(-1), reference.predict(queries))
  np.testing.assert_allclose(scores, reference.predict_proba(queries), atol=1e-6)


def test_train_chunks_merge_like_one_pass(monkeypatch):
  train, labels, queries = _random_problem(seed=3, n=101)
  whole = knn.knn_scores(train, labels, queries, k=7, num_classes=5)
  monkeypatch.setattr(knn, "_TRAIN_CHUNK", 16)  # 101 rows: 7 chunks, the last one padded.
  chunked = knn.knn_scores(train, labels, queries, k=7, num_classes=5, batch_size=10)
  np.testing.assert_array_equal(whole, chunked)
  # k larger than one chunk: neighbours accumulate across chunks.
  big_k = knn.knn_scores(train, labels, queries, k=40, num_classes=5)
  reference = KNeighborsClassifier(n_neighbors=40, algorithm="brute").fit(train, labels)
  np.testing.assert_allclose(big_k, reference.predict_proba(queries), atol=1e-6)


def test_vote_ties_go_to_smallest_class():
  train = np.array([[0.0], [1.0], [-2.0], [3.0]], np.float32)
  labels = np.array([3, 1, 2, 0])
  scores = knn.knn_scores(train, labels, np.array([[0.1]], np.float32), k=2, num_classes=4)
  np.testing.assert_allclose(scores, [[0.0, 0.5, 0.0, 0.5]])
  assert scores.argmax(-1)[0] == 1


def test_bad_inputs_fail_clearly():
  train, labels, queries = _random_problem(seed=0, n=5)
  with pytest.raises(ConfigError, match="k=6 must be an integer between 1 and the 5 training examples"):
    knn.knn_scores(train, labels, queries, k=6, num_classes=5)
  with pytest.raises(ConfigError, match="metric 'manhattan' is unknown"):
    knn.knn_scores(train, labels, queries, k=1, num_classes=5, metric="manhattan")
  with pytest.raises(DataError, match="outside"):
    knn.knn_scores(train, labels, queries, k=1, num_classes=2)
  with pytest.raises(DataError, match="dims"):
    knn.knn_scores(train, labels, queries[:, :3], k=1, num_classes=5)
