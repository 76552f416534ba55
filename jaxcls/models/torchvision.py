"""Import torchvision ImageNet weights: a torchvision state_dict -> the params and batch stats of a jaxcls model.

  python -m jaxcls.convert --model resnet50 --input resnet50.pth --output resnet50.msgpack

`--input` is a state_dict saved by torch (`.pth`/`.pt`, needs torch), by safetensors (`.safetensors`, needs the
`safetensors` package) or as NumPy arrays named by the state_dict keys (`.npz`, needs nothing). The class count
is read from the checkpoint's head; `--image_size` (default 224) matters only for ViTs, whose position embedding
fixes it. `--output` is a flax msgpack file (or `.npz`, flat `params/...` and `batch_stats/...` keys) holding
`{'params': ..., 'batch_stats': ...}`; `load_pretrained` puts it into freshly initialised variables for
fine-tuning, skipping the head when the class count differs.

Conversion is by name: every model with torchvision weights declares `TORCH_RENAMES`, regex substitutions from its
flax path (joined by '.', with kernel/scale -> weight, mean/var -> running_mean/var) to the torch key. Conv kernels
go OIHW -> HWIO, Linear weights are transposed. Any key left unmatched, or any shape mismatch, is an error.
"""

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import models
from jaxcls.core.errors import CheckpointError, ConfigError

_LEAVES = {
  ("params", "kernel"): "weight",
  ("params", "scale"): "weight",
  ("params", "alpha"): "weight",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}
_IGNORED = ("num_batches_tracked",)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torchvision state_dict from `.pth`/`.pt`, `.safetensors` or `.npz`, as float32 NumPy arrays."""
  if not os.path.isfile(path):
    raise ConfigError(f"Weights file {path!r} does not exist.")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pth", ".pt", ".bin"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ConfigError(f"Reading {path!r} needs torch (pip install torch), or save it as .npz/.safetensors.") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # training checkpoints wrap the state_dict
      if isinstance(state.get(key), Mapping):
        state = state[key]
    state = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  elif ext == ".safetensors":
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ConfigError(f"Reading {path!r} needs the safetensors package (pip install safetensors).") from e
    state = load_file(path)
  elif ext == ".npz":
    with np.load(path) as data:
      state = dict(data)
  else:
    raise ConfigError(f"Unknown weights format {ext!r} of {path!r}; use .pth, .pt, .safetensors or .npz.")
  state = {k.removeprefix("module."): np.asarray(v) for k, v in state.items()}  # DataParallel's prefix
  return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in state.items()}


def torch_key(collection: str, path: tuple[str, ...], renames) -> str:
  """The torchvision state_dict key of the flax leaf `collection/path`."""
  leaf = _LEAVES.get((collection, path[-1]), path[-1])
  key = ".".join((*path[:-1], leaf))
  for pattern, replacement in renames:
    key = re.sub(pattern, replacement, key)
  return key


def _to_flax(name: str, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if name == "kernel" and tensor.ndim == 4:
    tensor = tensor.transpose(2, 3, 1, 0)  # conv OIHW -> HWIO
  elif name == "kernel" and tensor.ndim == 2:
    tensor = tensor.T  # Linear [out, in] -> Dense [in, out]
  elif tensor.shape != shape and tensor.size == int(np.prod(shape)):
    tensor = tensor.reshape(shape)  # e.g. ConvNeXt's layer_scale [C, 1, 1] -> [C]
  return tensor


def _renames(model) -> Any:
  renames = getattr(type(model), "TORCH_RENAMES", None)
  if renames is None:
    known = [n for n in models.model_names() if hasattr(type(models.build({"name": n}, 2)), "TORCH_RENAMES")]
    raise ConfigError(f"Model {type(model).__name__} has no torchvision counterpart; convertible: {', '.join(known)}.")
  return renames


def abstract_variables(model, image_shape: tuple[int, int, int]) -> dict:
  """Shapes of the model's variables for one image of `image_shape` (traced, nothing computed)."""
  keys = {"params": jax.random.key(0, impl="rbg"), "dropout": jax.random.key(1, impl="rbg")}
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(keys, x, train=False), x)


def convert(model, state_dict: Mapping[str, np.ndarray], image_shape=(224, 224, 3)) -> dict:
  """{'params', 'batch_stats'} of `model` (NumPy float32) holding the torchvision `state_dict`'s values."""
  renames = _renames(model)
  abstract = abstract_variables(model, image_shape)
  used, problems, out = set(), [], {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    names = tuple(p.key for p in path)
    collection, inner = names[0], names[1:]
    key = torch_key(collection, inner, renames)
    if key not in state_dict:
      problems.append(f"{'/'.join(names)} needs missing key {key}")
      continue
    value = _to_flax(inner[-1], state_dict[key], leaf.shape)
    if value.shape != leaf.shape:
      problems.append(f"{key} has shape {state_dict[key].shape}, {'/'.join(names)} needs {leaf.shape}")
      continue
    used.add(key)
    node = out.setdefault(collection, {})
    for name in inner[:-1]:
      node = node.setdefault(name, {})
    node[inner[-1]] = value.astype(np.float32)
  unused = sorted(k for k in state_dict if k not in used and not k.endswith(_IGNORED))
  problems += [f"unexpected key {k}" for k in unused]
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise CheckpointError(f"The state_dict does not fit model {type(model).__name__}: {'; '.join(problems[:5])}{more}.")
  out.setdefault("batch_stats", {})
  return out


def num_classes_of(name: str, state_dict: Mapping[str, np.ndarray], image_shape) -> int:
  """The class count of a torchvision checkpoint: the length of the head bias (the leaf that varies with it)."""
  one, two = (abstract_variables(models.build({"name": name}, n), image_shape)["params"] for n in (1, 2))
  renames = _renames(models.build({"name": name}, 1))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one), jax.tree.leaves(two)):
    if a.shape != b.shape and path[-1].key == "bias":
      key = torch_key("params", tuple(p.key for p in path), renames)
      if key in state_dict:
        return int(state_dict[key].shape[0])
  raise CheckpointError(f"Cannot find the classifier head of model {name!r} in the state_dict.")


def save(variables: Mapping[str, Any], path: str) -> None:
  """Writes {'params', 'batch_stats'} as flax msgpack, or as flat '/'-joined keys if `path` ends in .npz."""
  from flax import serialization  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.endswith(".npz"):
    flat = {
      "/".join(p.key for p in path_): np.asarray(v) for path_, v in jax.tree_util.tree_leaves_with_path(variables)
    }
    np.savez(path, **flat)
    return
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, dict(variables))))


def load(path: str) -> dict:
  """The {'params', 'batch_stats'} nested dict written by `save`, from a local path or a gs:// object."""
  import io  # pylint: disable=g-import-not-at-top

  from flax import serialization  # pylint: disable=g-import-not-at-top

  from jaxcls.core import paths  # pylint: disable=g-import-not-at-top

  raw = paths.path(path, "weights file").read_bytes()  # one read: an object store has no cheap seek
  if path.endswith(".npz"):
    out: dict = {"params": {}, "batch_stats": {}}
    with np.load(io.BytesIO(raw)) as data:
      for flat_key, value in data.items():
        *parents, leaf = flat_key.split("/")
        node = out
        for name in parents:
          node = node.setdefault(name, {})
        node[leaf] = value
    return out
  return serialization.msgpack_restore(raw)


def load_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any]) -> tuple[dict, list[str]]:
  """`variables` with every leaf that `pretrained` holds with the same shape replaced; also the skipped paths.

  Fine-tuning on another class count keeps the fresh head: its leaves differ in shape and are skipped.
  """
  skipped = []

  def pick(path, fresh):
    node = pretrained
    for p in path:
      node = node.get(p.key) if isinstance(node, Mapping) else None
    if node is None or np.shape(node) != fresh.shape:
      skipped.append("/".join(p.key for p in path))
      return fresh
    return jnp.asarray(node, fresh.dtype)

  return jax.tree_util.tree_map_with_path(pick, dict(variables)), skipped


def run(model_name: str, input_path: str, output: str, image_size: int = 224) -> tuple[str, int, int]:
  """Converts `input_path` for model `model_name` and writes it to `output` (a file, or a folder).

  Returns the file written, the class count read from the checkpoint's head and the number of parameters.
  """
  if model_name not in models.MODELS:
    raise ConfigError(f"Unknown model {model_name!r}; known: {', '.join(models.model_names())}.")
  image_shape = (image_size, image_size, 3)
  state_dict = load_state_dict(input_path)
  num_classes = num_classes_of(model_name, state_dict, image_shape)
  variables = convert(models.build({"name": model_name}, num_classes), state_dict, image_shape)
  if os.path.isdir(output):
    output = os.path.join(output, f"{model_name}.msgpack")
  save(variables, output)
  return output, num_classes, sum(v.size for v in jax.tree.leaves(variables["params"]))
