"""The training loop in-process: sharding invariance, exact eval, resume, NaN stop, checkpoint mismatch."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import Interrupted, InterruptedAt, logged_losses, saved_state

from jaxcls.core import parallel
from jaxcls.core.errors import CheckpointError, ConfigError, NonFiniteLossError
from jaxcls.evaluation import loop as eval_loop
from jaxcls.store import checkpoint
from jaxcls.training import loop as train


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_losses(make_config, tmp_path):
  """Batch norm over the global batch, per-example random draws and the loss do not depend on the mesh."""
  config = make_config(**{"model.norm": "batch"})
  one = train.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  eight = train.train_and_evaluate(config, str(tmp_path / "eight"), devices=jax.devices())
  assert len(jax.devices()) == 8
  l1, l8 = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "eight")
  assert sorted(l1) == list(range(1, 13))
  np.testing.assert_allclose([l1[s] for s in sorted(l1)], [l8[s] for s in sorted(l8)], rtol=2e-5, atol=1e-6)
  assert one["accuracy"] == pytest.approx(eight["accuracy"])
  assert one["loss"] == pytest.approx(eight["loss"], rel=1e-5)


@pytest.mark.slow
def test_eval_counts_every_example_once(make_config, tmp_path):
  """100 eval examples with a global eval batch of 48 on 8 devices: padding must be masked out."""
  config = make_config(eval_batch_size=48, num_train_steps=4)
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["num_examples"] == 100
  assert np.sum(result["confusion_matrix"]) == 100
  with open(tmp_path / "report.json") as f:
    saved = json.load(f)
  assert saved["num_examples"] == 100 and saved["step"] == 4
  assert {"loss", "accuracy", "top4_accuracy", "split"} <= set(saved)
  # Cross-check accuracy against predictions computed directly from the restored parameters.
  from jaxcls import data, models
  from jaxcls.models import forward

  ds = data.build(config)
  state = saved_state(str(tmp_path), 4)
  model = models.build(config.model, 4)
  images, labels = [], []
  for batch in ds.eval_batches(48):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  x = forward.normalize(np.concatenate(images), ds.info.mean, ds.info.std, np.float32)
  logits = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, x, train=False)
  expected = float(np.mean(np.argmax(logits, -1) == np.concatenate(labels)))
  assert result["accuracy"] == pytest.approx(expected)
  # Ranking metrics use every eval example's probabilities, gathered across devices in split order.
  from sklearn import metrics as skm

  probs = np.asarray(jax.nn.softmax(logits.astype(np.float32), -1), np.float64)
  y = np.concatenate(labels)
  assert result["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"), abs=1e-5)
  assert result["macro_f1"] == pytest.approx(skm.f1_score(y, probs.argmax(1), average="macro"), abs=1e-9)
  for name in ("confusion.png", "per_class_f1.png", "roc_pr.png", "training_curves.png", "misclassified.png"):
    assert os.path.getsize(tmp_path / "plots" / name) > 1000, name
  # The grid shows the right images: re-read on the host, they are the eval rows the model got wrong.
  wrong = np.flatnonzero(np.argmax(logits, -1) != y)[:36]
  np.testing.assert_array_equal(eval_loop.misclassified_images(ds, 48, wrong), np.concatenate(images)[wrong])
  assert "plots/confusion.png" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_resume_continues_exactly(make_config, tmp_path):
  """Stopping after a checkpoint and re-running ends with the same parameters as one uninterrupted run."""
  config = make_config(**{"optimizer.name": "adamw", "optimizer.learning_rate": 0.01}, ema_decay=0.9)
  train.train_and_evaluate(config, str(tmp_path / "full"))
  # The first run is preempted right after its step-8 checkpoint (batch 9 is asked for only after it).
  from jaxcls import data

  with pytest.raises(Interrupted):
    train.train_and_evaluate(config, str(tmp_path / "resumed"), dataset=InterruptedAt(data.build(config), 9))
  assert not os.path.exists(tmp_path / "resumed" / "report.json")
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  a, b = saved_state(str(tmp_path / "full"), 12), saved_state(str(tmp_path / "resumed"), 12)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
  assert logged_losses(tmp_path / "full") == pytest.approx(logged_losses(tmp_path / "resumed"), rel=1e-6)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_checkpoint(make_config, tmp_path):
  """A huge rate: step 1 (warm-up rate 0) is fine, step 2's update overflows the next forward pass."""
  config = make_config(**{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 4}, checkpoint_every_steps=1)
  with pytest.raises(NonFiniteLossError, match=r"non-finite at step \d+") as error:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(str(error.value).split("at step ")[1].split()[0])
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False, fingerprint={})
  steps_saved = ckpt.all_steps()
  ckpt.close()
  assert steps_saved and max(steps_saved) < bad_step - 1
  assert f"the last checkpoint (step {max(steps_saved)}) is intact" in str(error.value)
  # The checkpoint written just before the bad step holds the parameters whose loss was non-finite: set aside.
  assert len(list((tmp_path / checkpoint.CORRUPT_DIR).glob(f"{bad_step - 1}-*"))) == 1
  state = saved_state(str(tmp_path), max(steps_saved))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused(make_config, tmp_path):
  train.train_and_evaluate(make_config(num_train_steps=4), str(tmp_path))
  # The workdir's config guard (jaxcls/store/workdir.py) refuses first; behind allow_config_change, the checkpoint's
  # shape fingerprint still refuses a state that cannot fit.
  with pytest.raises(ConfigError, match=r"dataset.num_classes: 4 -> 6"):
    train.train_and_evaluate(make_config(**{"dataset.num_classes": 6}), str(tmp_path))
  with pytest.raises(CheckpointError, match="num_classes: 4 in the checkpoint, 6 now"):
    train.train_and_evaluate(make_config(allow_config_change=True, **{"dataset.num_classes": 6}), str(tmp_path))
  with pytest.raises(CheckpointError, match="widths"):
    train.train_and_evaluate(make_config(allow_config_change=True, **{"model.widths": (8, 8)}), str(tmp_path))


def test_config_errors_are_clear(make_config, tmp_path):
  config = make_config()
  config.optimiser = {"name": "sgd"}
  with pytest.raises(ConfigError, match="Unknown config key 'optimiser.name'"):
    train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ConfigError, match="multiple of the 8 devices"):
    train.train_and_evaluate(make_config(batch_size=12), str(tmp_path))
  with pytest.raises(ConfigError, match="dtype"):
    train.train_and_evaluate(make_config(dtype="float16"), str(tmp_path))


@pytest.mark.slow
def test_bfloat16_trains(make_config, tmp_path):
  result = train.train_and_evaluate(make_config(dtype="bfloat16", num_train_steps=4), str(tmp_path))
  assert np.isfinite(result["loss"]) and result["num_examples"] == 100


def test_parallel_to_global_shapes():
  mesh = parallel.make_mesh()
  batch = parallel.to_global({"image": np.zeros((16, 4, 4, 1), np.uint8), "label": np.arange(16)}, mesh)
  assert batch["image"].shape == (16, 4, 4, 1)
  assert len(batch["label"].sharding.device_set) == 8


@pytest.mark.slow
def test_mixup_with_label_smoothing_trains_and_logs_the_data_wait(make_config, tmp_path):
  """Soft labels from the device augmentations reach the loss; the log says how long steps waited for data."""
  config = make_config(
    num_train_steps=4,
    eval_every_steps=4,
    log_every_steps=2,
    prefetch_to_device=2,
    augment="flip_lr|mixup(alpha=0.4)|cutmix(probability=0.5)",
    **{"task.label_smoothing": 0.1},
  )
  result = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result["loss"]) and result["num_examples"] == 100
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f if "train/loss" in line]
  assert [r["step"] for r in rows] == [2, 4]
  assert all(0 <= r["train/data_wait_share"] <= 1 and np.isfinite(r["train/loss"]) for r in rows)


def test_compiled_step_reports_flops_per_example():
  """FLOPs per example come from XLA's cost analysis of the partitioned program (per device / its examples)."""
  from jax.sharding import NamedSharding, PartitionSpec

  from jaxcls.core import compiled

  mesh = parallel.make_mesh()
  jitted = jax.jit(
    lambda w, x: x @ w, in_shardings=(NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data")))
  )
  step = compiled.CompiledOnFirstCall(jitted, "matmul", examples_per_device=64 / 8)
  out = step(np.ones((32, 16), np.float32), np.ones((64, 32), np.float32))
  assert out.shape == (64, 16)
  assert step.flops_per_example == pytest.approx(2 * 32 * 16, rel=0.05)
  assert step.compile_seconds > 0


@pytest.mark.slow
@pytest.mark.parametrize(
  "task, expected_keys",
  [
    ({"task.type": "binary", "dataset.num_classes": 2}, {"roc_auc", "best_f1_threshold", "f1"}),
    (
      {"task.type": "hierarchical", "task.tree": (("a",), ("a",), ("b",), ("b",))},
      {"level0_accuracy", "level1_accuracy", "mean_mistake_severity"},
    ),
  ],
)
def test_other_task_types_train_through_the_loop(make_config, tmp_path, task, expected_keys):
  result = train.train_and_evaluate(make_config(**task, num_train_steps=4), str(tmp_path))
  assert result["num_examples"] == 100 and expected_keys <= set(result)
  assert json.loads((tmp_path / "report.json").read_text())["task"] == task["task.type"]


@pytest.mark.slow
def test_multilabel_sets_from_arrays_train_end_to_end(make_config, tmp_path):
  """Multi-hot [N, K] labels in .npz files train the multilabel task; metrics match scikit-learn's."""
  rng = np.random.default_rng(0)

  def split(n):
    images = rng.integers(0, 100, (n, 8, 8, 3), dtype=np.uint8)
    labels = rng.random((n, 3)) < 0.4
    images[labels[:, None, None, :].repeat(8, 1).repeat(8, 2)] += 150  # label k <=> channel k is bright
    return images, labels.astype(np.uint8)

  for name, n in (("train", 128), ("test", 100)):
    images, labels = split(n)
    np.savez(tmp_path / f"{name}.npz", images=images, labels=labels)
  config = make_config(
    **{
      "dataset.name": "arrays",
      "dataset.path": str(tmp_path),
      "dataset.image_size": None,
      "task.type": "multilabel",
      "optimizer.learning_rate": 0.1,
    },
    num_train_steps=24,
    augment="flip_lr",
  )
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["num_examples"] == 100
  assert {"hamming_loss", "macro_f1", "micro_roc_auc"} <= set(result)
  assert result["micro_roc_auc"] > 0.9  # channel brightness is an easy cue
  from jaxcls import data

  with pytest.raises(ConfigError, match="one label per image"):
    next(
      data.build(
        make_config(
          **{
            "dataset.name": "arrays",
            "dataset.path": str(tmp_path),
            "dataset.image_size": None,
            "dataset.sampling": "balanced",
          }
        )
      )
      .with_sampling("balanced")
      .train_batches(16, start_step=0, seed=0)
    )
