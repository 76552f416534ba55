"""Transfer learning (config.init_from, backbone_lr_factor, init_head) and the persistent compilation cache.

A small CNN is pretrained on 800 of scikit-learn's digits. The target task is the other digits under new class
names (so a new head) with only 3 training images per class, where a frozen pretrained backbone beats the same
training from scratch by a wide margin.
"""

import json
import os
import subprocess

import jax
import numpy as np
import pytest
from conftest import REPO, subprocess_env, tiny_config

from jaxcls import data, models
from jaxcls.config import check as config_check
from jaxcls.core.errors import CheckpointError, ConfigError
from jaxcls.evaluation import loop as eval_loop
from jaxcls.models import torchvision as convert
from jaxcls.store import checkpoint
from jaxcls.training import loop as train
from jaxcls.training import transfer

SOURCE_CLASSES = tuple("0123456789")
TARGET_CLASSES = tuple(f"digit {k}" for k in range(10))
FOUR = TARGET_CLASSES[:4]
MODEL = {"model.widths": (16, 32), "model.dropout": 0.0}
RUN = dict(
  **MODEL, **{"dataset.name": "arrays"}, augment="", log_every_steps=100, eval_every_steps=1000, eval_batch_size=400
)


def _digits():
  from sklearn.datasets import load_digits

  digits = load_digits()
  return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target


@pytest.fixture(scope="module", autouse=True)
def no_plots():
  """The report's figures cost seconds per run and are tested elsewhere."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(eval_loop, "write_plots", lambda *args, **kwargs: [])
    yield


@pytest.fixture(scope="module")
def target_split():
  """(train images, train labels, eval images, eval labels): 3 training images per class, from images 950 on."""
  images, labels = _digits()
  images, labels = images[950:], labels[950:]
  rng = np.random.default_rng(0)
  train_rows = np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:3] for k in range(10)])
  eval_rows = np.setdiff1d(np.arange(len(labels)), train_rows)
  return images[train_rows], labels[train_rows], images[eval_rows], labels[eval_rows]


def _target(split):
  return data.from_arrays(*split, class_names=TARGET_CLASSES, source="target digits")


@pytest.fixture(scope="module")
def source_workdir(tmp_path_factory):
  images, labels = _digits()
  dataset = data.from_arrays(
    images[:800], labels[:800], images[800:950], labels[800:950], class_names=SOURCE_CLASSES, source="source digits"
  )
  workdir = str(tmp_path_factory.mktemp("source"))
  config = tiny_config(
    **RUN, batch_size=32, num_train_steps=60, checkpoint_every_steps=60, **{"optimizer.learning_rate": 0.1}
  )
  report = train.train_and_evaluate(config, workdir, dataset=dataset)
  assert report["accuracy"] > 0.9, report["accuracy"]
  return workdir


def _finetune(workdir, split, seed=0, **overrides):
  config = tiny_config(
    **RUN,
    seed=seed,
    batch_size=16,
    num_train_steps=20,
    checkpoint_every_steps=10,
    **{"optimizer.learning_rate": 0.1},
    **overrides,
  )
  return train.train_and_evaluate(config, workdir, dataset=_target(split))


@pytest.fixture(scope="module")
def runs(source_workdir, target_split, tmp_path_factory):
  """Scratch and frozen-backbone fine-tunes of the target task, same steps and seeds."""
  out = {}
  for seed in (0, 1):
    for name, extra in (
      ("scratch", {}),
      ("frozen", {"init_from": source_workdir, "optimizer.backbone_lr_factor": 0.0}),
    ):
      workdir = str(tmp_path_factory.mktemp(f"{name}{seed}"))
      out[name, seed] = (workdir, _finetune(workdir, target_split, seed, **extra))
  return out


def _state(workdir, step=None):
  ckpt = checkpoint.Checkpointer(workdir, keep=100, async_save=False, fingerprint={})
  try:
    return ckpt.read_state(ckpt.latest_step() if step is None else step)
  finally:
    ckpt.close()


def _flat(tree):
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(x)
    for path, x in jax.tree_util.tree_leaves_with_path(tree)
  }


@pytest.mark.slow
def test_finetuning_beats_training_from_scratch(runs):
  accuracy = {key: report["accuracy"] for key, (_, report) in runs.items()}
  margins = [accuracy["frozen", seed] - accuracy["scratch", seed] for seed in (0, 1)]
  assert min(margins) > 0.05 and np.mean(margins) > 0.1, accuracy  # measured: 0.26 and 0.12
  assert min(accuracy["frozen", seed] for seed in (0, 1)) > 0.85, accuracy  # measured: 0.93 and 0.92


@pytest.mark.slow
def test_frozen_backbone_is_bit_identical_and_the_head_is_new_and_trained(runs, source_workdir):
  workdir = runs["frozen", 0][0]
  source, early, final = _state(source_workdir), _state(workdir, 10), _state(workdir)
  for name in ("params", "batch_stats"):
    want, got = _flat(source[name]), _flat(final[name])
    backbone = [k for k in got if not k.startswith("head/")]
    assert backbone and len(backbone) == len([k for k in want if not k.startswith("head/")])
    for key in backbone:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  head, before = _flat(final["params"]), _flat(early["params"])
  assert head["head/kernel"].shape == (32, 10) and _flat(source["params"])["head/kernel"].shape == (32, 10)
  assert not np.allclose(head["head/kernel"], before["head/kernel"])  # the head trains
  # The frozen group keeps no optimizer state (no momentum): only the head's trace is stored.
  opt = _flat(final["opt_state"])
  assert opt and all("head" in k for k in opt if np.ndim(opt[k]) > 0), sorted(opt)


@pytest.mark.slow
def test_resume_uses_its_own_checkpoint_and_keeps_the_fingerprint(runs, target_split):
  workdir, report = runs["frozen", 0]
  again = _finetune(workdir, target_split, 0, init_from="/no/such/weights", **{"optimizer.backbone_lr_factor": 0.0})
  assert again["step"] == 20 and again["accuracy"] == report["accuracy"]
  with pytest.raises(ConfigError, match=r"optimizer.backbone_lr_factor: 0.0 -> 1.0"):
    _finetune(workdir, target_split, 0)  # the workdir's config guard: a training key changed
  with pytest.raises(CheckpointError, match="param_groups"):  # accepted, the state still cannot take it:
    _finetune(workdir, target_split, 0, allow_config_change=True)  # one parameter group, another opt structure


# The head: found per model family, kept or re-initialised.


@pytest.mark.parametrize(
  "name, image_shape, head",
  [
    ("simple_cnn", (8, 8, 1), "head"),
    ("resnet18", (32, 32, 3), "fc"),
    ("vgg11", (32, 32, 3), "classifier_6"),
    ("lenet5", (32, 32, 1), "output"),
  ],
)
def test_head_is_found_for_each_family(name, image_shape, head):
  assert transfer.find_head({"name": name}, 10, image_shape) == ((head,),)


def test_head_modules_override_is_checked():
  config = tiny_config(**MODEL, head_modules=("Dense_9",))
  with pytest.raises(ConfigError, match="'Dense_9'.*top-level modules are: BatchNorm_0, BatchNorm_1, Conv_0"):
    transfer.resolve_head(config, 4, (8, 8, 1))
  config.head_modules = ("head", "Conv_1")
  assert transfer.resolve_head(config, 4, (8, 8, 1)) == (("head",), ("Conv_1",))


def _fresh(num_classes, widths=(16, 32)):
  """Stand-in fresh variables (random values of a new model's shapes) and the model config."""
  config = tiny_config(**dict(MODEL, **{"model.widths": widths}))
  shapes = convert.abstract_variables(models.build(config.model, num_classes), (8, 8, 1))
  rng = np.random.default_rng(num_classes)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), dict(shapes)), config.model


@pytest.fixture(scope="module")
def source(source_workdir):
  return transfer.read_source(source_workdir)


@pytest.mark.parametrize(
  "policy, class_names, kept",
  [
    ("auto", SOURCE_CLASSES, True),
    ("auto", TARGET_CLASSES, False),
    ("reinit", SOURCE_CLASSES, False),
    ("keep", TARGET_CLASSES, True),
  ],
)
def test_head_policy_when_the_class_count_matches(source, policy, class_names, kept):
  fresh, model_config = _fresh(10)
  merged = transfer.merge(fresh, source, (("head",),), policy, class_names, model_config)
  want = source.variables if kept else fresh
  np.testing.assert_array_equal(merged.variables["params"]["head"]["kernel"], want["params"]["head"]["kernel"])
  np.testing.assert_array_equal(
    merged.variables["params"]["Conv_1"]["kernel"], source.variables["params"]["Conv_1"]["kernel"]
  )
  assert merged.head_kept == kept and merged.loaded_stats == 2 * (16 + 32)


def test_head_is_reinitialised_on_another_class_count_and_keep_refuses(source):
  fresh, model_config = _fresh(4)
  merged = transfer.merge(fresh, source, (("head",),), "auto", FOUR, model_config)
  assert not merged.head_kept and "head/bias is (10,) in the source, (4,) now" in merged.reason
  np.testing.assert_array_equal(merged.variables["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
  assert merged.loaded_params == sum(x.size for x in jax.tree.leaves(fresh["params"])) - 32 * 4 - 4
  with pytest.raises(ConfigError, match="init_head='keep'.*head/kernel is \\(32, 10\\) in the source, \\(32, 4\\) now"):
    transfer.merge(fresh, source, (("head",),), "keep", FOUR, model_config)


def test_converted_weight_files_load(source, tmp_path):
  fresh, model_config = _fresh(4)
  for name in ("w.npz", "w.msgpack"):
    convert.save(source.variables, str(tmp_path / name))
    from_file = transfer.read_source(str(tmp_path / name))
    assert from_file.class_names is None
    merged = transfer.merge(fresh, from_file, (("head",),), "auto", FOUR, model_config)
    np.testing.assert_array_equal(
      merged.variables["batch_stats"]["BatchNorm_1"]["var"], source.variables["batch_stats"]["BatchNorm_1"]["var"]
    )


# Clear errors.


def test_mismatched_model_names_shapes_and_config_keys(source):
  fresh, model_config = _fresh(4, widths=(8, 32))
  with pytest.raises(CheckpointError) as info:
    transfer.merge(fresh, source, (("head",),), "auto", FOUR, model_config)
  message = str(info.value)
  assert "params/Conv_0/kernel is (3, 3, 1, 16) in the source, (3, 3, 1, 8) now" in message
  assert "model.widths: [16, 32] in the source, (8, 32) now" in message


def test_bad_paths(source_workdir, tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  (tmp_path / "empty").mkdir()
  (tmp_path / "w.npz").write_bytes(b"not a zip")
  cases = [
    (str(tmp_path / "missing"), -1, ConfigError, "does not exist"),
    (str(tmp_path / "notes.txt"), -1, ConfigError, "not a weights file"),
    (str(tmp_path / "empty"), -1, ConfigError, "neither a jaxcls workdir"),
    (str(tmp_path / "w.npz"), -1, CheckpointError, "Cannot read the weights file"),
    (str(tmp_path / "w.npz"), 5, ConfigError, "applies to workdirs only"),
    (os.path.join(source_workdir, "checkpoints", "60"), 30, ConfigError, "checkpoint of step 60"),
    (source_workdir, 30, CheckpointError, "No checkpoint at step 30.*available: 60"),
  ]
  for path, step, error, fragment in cases:
    with pytest.raises(error, match=fragment):
      transfer.read_source(path, step)
  assert transfer.read_source(os.path.join(source_workdir, "checkpoints", "60")).description.endswith("step 60")
  with pytest.raises(ConfigError, match="init_head='kept' is not valid"):
    transfer.Plan(tiny_config(init_head="kept"), 4, (8, 8, 1), FOUR)


# The shipped template, as a new user runs it: fine-tune the pretrained model on a second small folder.


def test_transfer_folder_config_validates_with_the_two_paths():
  import importlib.util

  spec = importlib.util.spec_from_file_location("transfer_folder", os.path.join(REPO, "configs", "transfer_folder.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert config.init_from == "" and config.dataset.path == "" and config.optimizer.backbone_lr_factor == 0.1
  config.init_from, config.dataset.path = "/weights/resnet18.msgpack", "/data/pets"
  config_check.validate(config)


def test_cli_finetunes_on_a_folder_and_the_second_run_reads_the_compilation_cache(
  source_workdir, target_split, tmp_path, python
):
  from PIL import Image

  _, _, images, labels = target_split
  for k, name in enumerate(FOUR):
    os.makedirs(tmp_path / "photos" / name)
    for i, image in enumerate(images[labels == k][:5]):
      Image.fromarray(image).save(tmp_path / "photos" / name / f"{i}.png")
  with open(os.path.join(source_workdir, "config.json")) as f:
    source_config = json.load(f)["dataset"]
  cache = tmp_path / "xla"
  args = [
    python,
    "-m",
    "jaxcls.main",
    "--config",
    os.path.join(REPO, "configs", "transfer_folder.py"),
    f"--config.dataset.path={tmp_path / 'photos'}",
    f"--config.init_from={source_workdir}",
    "--config.dataset.image_size=(8, 8)",
    "--config.dataset.channels=1",
    "--config.dataset.cache=memory",
    "--config.dataset.train_crop=resize",
    "--config.dataset.eval_crop=resize",
    f"--config.dataset.mean=({source_config['mean'][0]},)",
    f"--config.dataset.std=({source_config['std'][0]},)",
    "--config.model.name=simple_cnn",
    "--config.model.widths=(16, 32)",
    "--config.model.dropout=0.0",
    "--config.batch_size=8",
    "--config.num_train_steps=4",
    "--config.optimizer.warmup_steps=1",
    f"--config.compilation_cache_dir={cache}",
  ]
  env = subprocess_env(2)
  first = subprocess.run(
    [*args, f"--workdir={tmp_path / 'a'}"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert "head head (132 parameters) re-initialised because" in first.stderr
  assert "backbone: 4,848 parameters at 0.1 x the learning rate" in first.stderr
  assert json.loads((tmp_path / "a" / "report.json").read_text())["num_examples"] == 4
  entries = os.listdir(cache)
  assert entries

  second = subprocess.run(
    [*args, f"--workdir={tmp_path / 'b'}"],
    env=dict(env, JAX_LOG_COMPILES="1"),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Persistent compilation cache hit for 'jit_train_step'" in second.stderr, second.stderr[-3000:]
  assert "Persistent compilation cache hit for 'jit_eval_step'" in second.stderr
