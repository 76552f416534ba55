"""Issue 16 defect 9: a binary task's positive class is `task.positive_class`, named in the report and the plots.

Every one-class metric is checked against scikit-learn with `pos_label` the chosen class; the default (no key)
keeps the second class in name order, as workdirs trained before the key evaluate.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from sklearn import metrics as skm

from jaxcls import data, tasks
from jaxcls.core.errors import ConfigError
from jaxcls.evaluation import plots, report
from jaxcls.store import build

NAMES = ("face", "not_face")


def _binary(**keys):
  return tasks.build({"type": "binary", "class_names": NAMES, **keys}, 2)


def _finalize(task, logits, labels):
  logits, labels = jnp.asarray(logits[:, None], jnp.float32), jnp.asarray(labels, jnp.int32)
  mask = jnp.ones(len(labels), bool)
  sums, outputs = jax.tree.map(
    np.asarray, (task.eval_sums(logits, labels, mask), task.eval_outputs(logits, labels, mask))
  )
  return task.finalize(
    {k: v.astype(np.int64) if v.dtype.kind == "i" else v.astype(np.float64) for k, v in sums.items()}, outputs
  ), outputs


@pytest.mark.parametrize("positive_class, pos_label", [("face", 0), ("not_face", 1), ("", 1)])
def test_the_positive_class_decides_and_its_metrics_match_scikit_learn(positive_class, pos_label):
  rng = np.random.default_rng(3)
  n = 240
  labels = rng.integers(0, 2, n)
  logit_of_class_1 = rng.normal(size=n) + 1.2 * (2 * labels - 1)
  task = _binary(positive_class=positive_class, threshold=0.4)
  assert task.positive == pos_label and task.positive_name == NAMES[pos_label]
  logits = logit_of_class_1 if pos_label == 1 else -logit_of_class_1  # the head scores the positive class
  result, outputs = _finalize(task, logits.astype(np.float32), labels)
  p_positive = np.asarray(jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)))
  predicted = np.where(p_positive >= np.float32(0.4), pos_label, 1 - pos_label)
  np.testing.assert_array_equal(task.decide(p_positive), predicted)
  np.testing.assert_array_equal(np.asarray(task.predict(jnp.asarray(logits[:, None], jnp.float32))), predicted)
  assert result["positive_class"] == NAMES[pos_label]
  assert result["confusion_matrix"] == skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
  assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-12)
  for name, score in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
    assert result[name] == pytest.approx(score(labels, predicted, pos_label=pos_label), abs=1e-12), name
  assert result["specificity"] == pytest.approx(skm.recall_score(labels, predicted, pos_label=1 - pos_label))
  assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predicted), abs=1e-12)
  is_positive = labels == pos_label
  assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(is_positive, logits), abs=1e-12)
  assert result["average_precision"] == pytest.approx(skm.average_precision_score(is_positive, logits), abs=1e-12)
  assert result["log_loss"] == pytest.approx(skm.log_loss(is_positive, p_positive.astype(np.float64)), abs=1e-5)
  # The loss trains the logit towards the positive class, for int and two-class soft labels alike.
  loss = task.loss(jnp.asarray(logits[:, None], jnp.float32), jnp.asarray(labels))
  soft = task.loss(jnp.asarray(logits[:, None], jnp.float32), jnp.asarray(np.eye(2, dtype=np.float32)[labels]))
  expected = np.logaddexp(0.0, logits) - is_positive * logits
  np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(soft), expected, rtol=1e-5, atol=1e-6)
  # The plots find the same class from the report's name.
  assert plots.positive_index(result["positive_class"], NAMES) == pos_label
  assert plots.binary_curve_label(result["positive_class"], NAMES) == f"{NAMES[pos_label]} (positive class)"


def test_predict_export_and_explain_name_the_positive_class():
  task = _binary(positive_class="face")
  record = task.prediction_record(NAMES, np.float32(0.8), 2)
  assert record["prediction"] == "face" and record["positive"] == ["face", pytest.approx(0.8)]
  assert record["top_k"][0] == ["face", pytest.approx(0.8)] and record["top_k"][1][0] == "not_face"
  assert task.export_metadata(NAMES)["positive_class"] == "face"
  scores, probs = task.attribution_scores(jnp.asarray([[2.0]]))
  assert float(scores[0, 0]) == 2.0 and float(scores[0, 1]) == -2.0  # face's score rises with the logit
  assert task.explained_class(np.asarray(probs[0])) == 0


def test_an_unknown_positive_class_lists_the_class_names():
  with pytest.raises(ConfigError, match=r"config.task.positive_class='faces'.*'face', 'not_face'"):
    _binary(positive_class="faces")


def test_config_key_reaches_the_task_and_the_report_names_it(tmp_path):
  info = data.build(tiny_config(**{"task.type": "binary", "dataset.num_classes": 2})).info
  config = tiny_config(**{"task.type": "binary", "dataset.num_classes": 2, "task.positive_class": info.class_names[0]})
  task, _, _ = build.build_task_and_model(config, info)
  assert task.positive == 0
  default, _, _ = build.build_task_and_model(tiny_config(**{"task.type": "binary", "dataset.num_classes": 2}), info)
  assert default.positive == 1  # no key: the choice workdirs trained before the key have
  rng = np.random.default_rng(0)
  result, outputs = _finalize(task, rng.normal(size=50).astype(np.float32), rng.integers(0, 2, 50))
  final = {"step": 1, "split": "test", **result}
  report.write(str(tmp_path), final, info.class_names)
  assert f"Positive class: **{info.class_names[0]}**" in (tmp_path / "report.md").read_text()
  assert json.loads((tmp_path / "report.json").read_text())["positive_class"] == info.class_names[0]
  path = plots.roc_pr_curves(
    outputs["probs"],
    outputs["labels"],
    info.class_names,
    str(tmp_path / "roc.png"),
    positive_class=result["positive_class"],
  )
  assert (tmp_path / "roc.png").stat().st_size > 1000 and path.endswith("roc.png")
