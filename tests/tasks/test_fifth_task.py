"""A fifth task type, registered in this test alone, trains, evaluates, predicts and exports with no edit elsewhere.

The proof that the Task contract (jaxcls/tasks/base.py) is everything the rest of jaxcls asks of a task: this
ordinal-regression task differs from the built-in ones where it matters. Its head has K - 1 outputs (one per
boundary between neighbouring classes, P(y > k) = sigmoid(logit_k)), its loss is a sum of binary cross entropies,
its probabilities come from differences of the cumulative ones, its decision is the median class (not the most
probable one), and its report has a metric of its own (the mean absolute error in classes).
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config
from PIL import Image

from jaxcls import data, tasks
from jaxcls.core.errors import ConfigError, DataError
from jaxcls.evaluation import workdir_eval
from jaxcls.inference import exporter, predictor
from jaxcls.store import restore
from jaxcls.training import loop

NAME = "test_ordinal"


@tasks.TASKS.register(NAME)
@dataclasses.dataclass(frozen=True)
class Ordinal(tasks.Task):
  """K ordered classes (grades, ages, severities): K - 1 cumulative logits, the median class as the decision."""

  num_classes: int

  @property
  def num_outputs(self) -> int:
    return self.num_classes - 1

  def _above(self, logits):
    return jax.nn.sigmoid(logits.astype(jnp.float32))  # [B, K - 1]: P(y > k)

  def loss(self, logits, labels):
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    targets = (hard[:, None] > jnp.arange(self.num_classes - 1)).astype(jnp.float32)
    return jnp.sum(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets), -1)

  def probabilities(self, logits):
    above = self._above(logits)
    ones, zeros = jnp.ones_like(above[:, :1]), jnp.zeros_like(above[:, :1])
    cumulative = jnp.concatenate([ones, above], -1) - jnp.concatenate([above, zeros], -1)
    probs = jnp.maximum(cumulative, 0.0)
    return probs / jnp.sum(probs, -1, keepdims=True)

  def predict(self, logits):
    return median_class(self.probabilities(logits), jnp)

  def decide(self, probs):
    return median_class(np.asarray(probs, np.float32), np)

  def eval_sums(self, logits, labels, mask):
    pred = self.predict(logits)
    valid = mask.astype(jnp.float32)
    return {
      "loss_sum": jnp.sum(self.loss(logits, labels) * valid),
      "count": jnp.sum(mask).astype(jnp.int32),
      "correct": jnp.sum((pred == labels) & mask).astype(jnp.int32),
      "abs_error": jnp.sum(jnp.abs(pred - labels) * mask).astype(jnp.int32),
    }

  def finalize(self, sums, outputs: dict | None = None) -> dict:
    count = max(int(sums["count"]), 1)
    return {
      "num_examples": int(sums["count"]),
      "loss": float(sums["loss_sum"]) / count,
      "accuracy": int(sums["correct"]) / count,
      "mean_absolute_error": int(sums["abs_error"]) / count,
    }

  def export_metadata(self, class_names) -> dict:
    return {"output": "probabilities [B, K]", "decision": "median class (cumulative probability >= 0.5)"}


def median_class(probs, xp):
  """The first class whose cumulative probability reaches 1/2 (on the device with jnp, on the host with np)."""
  return xp.sum(xp.cumsum(probs, -1) < 0.5, -1).clip(0, probs.shape[-1] - 1)


def test_the_contract_methods_of_the_toy_task():
  task = tasks.build({"type": NAME}, 4)
  assert task.num_outputs == 3 and task.single_label
  logits = jnp.array([[4.0, 4.0, -4.0], [-4.0, -4.0, -4.0], [2.0, -2.0, -4.0]])
  probs = np.asarray(task.probabilities(logits))
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
  assert list(task.decide(probs)) == list(np.asarray(task.predict(logits))) == [2, 0, 1]
  # The median, not the top: P = (0.4, 0.2, 0.4) decides class 1, where argmax would say 0.
  assert int(task.decide(np.array([0.4, 0.2, 0.4], np.float32))) == 1
  record = task.prediction_record(["a", "b", "c"], np.array([0.4, 0.2, 0.4], np.float32), top_k=2)
  assert record["prediction"] == "b" and record["probability"] == pytest.approx(0.2)


def test_a_registered_class_that_is_not_a_task_is_refused_with_one_line():
  @tasks.TASKS.register("test_not_a_task")
  @dataclasses.dataclass(frozen=True)
  class NotATask:  # pylint: disable=unused-variable
    num_classes: int

  with pytest.raises(
    ConfigError, match="'test_not_a_task' is registered as .* not a dataclass subclassing jaxcls.tasks.Task"
  ):
    tasks.build({"type": "test_not_a_task"}, 3)
  # One-class data is refused for a single-label task of any type, the toy one included.
  with pytest.raises(DataError, match="a test_ordinal classifier needs at least 2"):
    tasks.check_classes(NAME, ["only"])


def test_a_task_registered_here_trains_evaluates_predicts_and_exports(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(num_train_steps=4, eval_every_steps=4, checkpoint_every_steps=4, augment="")
  config.task.type = NAME
  config.model.widths = (4, 8)
  result = loop.train_and_evaluate(config, workdir)
  assert 0.0 <= result["mean_absolute_error"] <= 3.0 and result["num_examples"] == 100

  report = workdir_eval.evaluate_workdir(workdir, output_dir=str(tmp_path / "eval"))
  assert report["task"] == NAME and report["mean_absolute_error"] == result["mean_absolute_error"]
  assert os.path.exists(tmp_path / "eval" / "report.md")

  config = restore.load_config(workdir)
  batch = next(iter(data.build(config).eval_batches(16)))
  files = []
  for i, image in enumerate(batch["image"][:3]):
    files.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(image).save(files[-1])
  restored = restore.restore(workdir)
  records = predictor.predict_files(restored, files, top_k=2)
  probs = predictor.Predictor(restored)(batch["image"][:3])
  assert probs.shape == (3, 4)
  names = list(restored.info.class_names)
  assert [r["prediction"] for r in records] == [names[int(c)] for c in restored.task.decide(probs)]
  assert all(r["error"] is None and len(r["top_k"]) == 2 for r in records)

  meta = exporter.export_model(restored, str(tmp_path / "model"), platforms=("cpu",))
  assert meta["task"] == NAME and meta["decision"].startswith("median class")
  with open(tmp_path / "model" / "model.json") as f:
    assert json.load(f)["output"] == "probabilities [B, K]"
