"""Attribution maps of a trained workdir's predictions: the library behind `python -m jaxcls.explain`.

Writes, per image file (folders are searched recursively), one PNG: the input as the model sees it and a heat
overlay per attribution method (jaxcls/inference/attribution.py) for each class explained (default: the predicted one;
multi-label: every label at or above its threshold), titled with the prediction (multi-label: every such label) and
its probability; plus OUT/index.md and OUT/index.json listing every file, its PNG or its
error. Images are preprocessed exactly as the workdir's evaluation did (jaxcls/data/preprocess.py). A file that cannot
be read gets an error line and the others go on; the exit status is non-zero only when every file failed.

Attributions are computed in float32 whatever the training dtype, with respect to the normalised image. The class
score explained is the task's `attribution_scores` (jaxcls/tasks/base.py): the logit (multiclass, multi-label),
+/- the single logit (binary: class 1 / class 0), or the leaf log-probability (hierarchical).
"""

import dataclasses
import io
import json
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from jaxcls.core import paths as path_layer  # `paths` names the image arguments here
from jaxcls.core.errors import ConfigError

METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam")
BASELINES = ("black", "mean")
TITLES = {
  "saliency": "gradient saliency",
  "smoothgrad": "SmoothGrad",
  "integrated_gradients": "integrated gradients",
  "gradcam": "Grad-CAM",
}
_SIGNED = ("integrated_gradients",)  # drawn red (for the class) / blue (against); the others are magnitudes


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the maps are computed (the command's flags)."""

  methods: Sequence[str] | None = None  # None: every method the model supports
  baseline: str = "black"
  ig_steps: int = 32
  smoothgrad_samples: int = 32
  smoothgrad_noise: float = 0.15
  batch_size: int = 32
  seed: int = 0

  def __post_init__(self):
    if self.batch_size < 1:
      raise ConfigError(f"--batch_size={self.batch_size} must be at least 1 (noisy copies or path points per call).")


def resolve_classes(value: str | None, class_names: Sequence[str]) -> list[int]:
  """Indices of the comma-separated class names or indices in `value` (empty: the predicted class)."""
  from jaxcls.core.registry import did_you_mean  # pylint: disable=g-import-not-at-top

  if not value:
    return []
  names = list(class_names)
  indices = []
  for item in (v.strip() for v in value.split(",") if v.strip()):
    if item in names:
      indices.append(names.index(item))
    elif item.lstrip("-").isdigit() and 0 <= int(item) < len(names):
      indices.append(int(item))
    else:
      shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
      raise ConfigError(
        f"--class {item!r} is neither a class name nor an index in [0, {len(names)})."
        f"{did_you_mean(item, names)} Classes: {shown}."
      )
  return indices


def resolve_methods(value: Sequence[str] | str | None) -> list[str] | None:
  """The requested methods, validated; None when not given (every method the model supports)."""
  if value is None or value == "":
    return None
  items = [m.strip() for m in value.split(",")] if isinstance(value, str) else list(value)
  items = [m for m in items if m]
  unknown = [m for m in items if m not in METHODS]
  if unknown or not items:
    raise ConfigError(f"--methods={','.join(items)!r} is not valid; choose among {','.join(METHODS)}.")
  return list(dict.fromkeys(items))


class Explainer:
  """Jitted attribution maps of one restored model, for normalised float32 images [H, W, C] of its size."""

  def __init__(self, restored, settings: Settings = Settings()):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from jaxcls import models  # pylint: disable=g-import-not-at-top
    from jaxcls.inference import attribution
    from jaxcls.models import forward

    self.restored, self.settings = restored, settings
    info = restored.info
    # float32 whatever the training dtype: bfloat16 gradients would make noisy maps.
    model = models.build(restored.config.model, restored.task.num_outputs, "float32")
    variables = forward.model_variables(restored.variables)
    task = restored.task

    def score_fn(images):
      return task.attribution_scores(model.apply(variables, images, train=False))[0]

    self._normalize = jax.jit(lambda images: forward.normalize(images, info.mean, info.std, jnp.float32))
    self._forward = jax.jit(lambda images: task.attribution_scores(model.apply(variables, images, train=False)))
    if settings.baseline not in BASELINES:
      raise ConfigError(f"--baseline={settings.baseline!r} is not valid; choose {' or '.join(BASELINES)}.")
    # In normalised units the dataset mean is 0 and black is -mean/std.
    black = np.asarray(self._normalize(np.zeros((1,) + tuple(info.image_shape), np.uint8)))[0]
    self.baseline = black if settings.baseline == "black" else np.zeros_like(black)
    requested = resolve_methods(settings.methods)
    self.feature_map, self.gradcam_skipped = None, None
    if requested is None or "gradcam" in requested:
      try:
        self.feature_map = attribution.find_feature_map(score_fn, tuple(info.image_shape))
      except ConfigError as e:
        if requested is not None:
          raise
        self.gradcam_skipped = str(e)  # not asked for by name: the other methods still run
    self.methods = requested or [m for m in METHODS if m != "gradcam" or self.feature_map is not None]
    s = settings
    functions = {
      "saliency": lambda x, c, key: attribution.saliency(score_fn, x, c),
      "smoothgrad": lambda x, c, key: attribution.smoothgrad(
        score_fn, x, c, key, noise_level=s.smoothgrad_noise, num_samples=s.smoothgrad_samples, batch_size=s.batch_size
      ),
      "integrated_gradients": lambda x, c, key: attribution.integrated_gradients(
        score_fn, x, c, jnp.asarray(self.baseline), num_steps=s.ig_steps, batch_size=s.batch_size
      ),
      "gradcam": lambda x, c, key: attribution.grad_cam(score_fn, x, c, self.feature_map),
    }
    self._maps = {m: jax.jit(functions[m]) for m in self.methods}
    self._key = jax.random.key(settings.seed)

  def scores(self, images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised images, class scores [N, K], probabilities [N, K]) of uint8 images [N, H, W, C]."""
    normalised = self._normalize(images_uint8)
    scores, probs = self._forward(normalised)
    return np.asarray(normalised), np.asarray(scores), np.asarray(probs)

  def maps(self, image: np.ndarray, class_index: int, image_number: int) -> dict[str, np.ndarray]:
    """{method: [H, W] map} of one normalised image; SmoothGrad's noise depends on `image_number` only."""
    import jax  # pylint: disable=g-import-not-at-top

    key = jax.random.fold_in(self._key, image_number)
    return {m: np.asarray(f(image, class_index, key), np.float32) for m, f in self._maps.items()}

  def baseline_score(self, class_index: int) -> float:
    """The class score of the integrated-gradients baseline (completeness: map total ~ score - this)."""
    return float(np.asarray(self._forward(self.baseline[None])[0])[0, class_index])


def explain_files(
  workdir: str,
  paths: Sequence[str],
  *,
  step: int | str | None = None,
  classes: str | None = None,
  output_dir: str | None = None,
  settings: Settings = Settings(),
  workers: int = 0,
) -> dict:
  """Explains every image file under `paths`; writes OUT/<name>.png, OUT/index.json and OUT/index.md.

  Returns the index: {'workdir', 'step', 'model', 'methods', ..., 'images': [record per file]} where a record
  has 'path', 'error' (None or why), and for readable files 'png', 'predicted', 'probability' and 'explained'
  (per class: name, index, probability, score, and the integrated-gradients total next to score - baseline score).
  """
  from jaxcls.data import preprocess  # pylint: disable=g-import-not-at-top
  from jaxcls.store import restore

  restored = restore.restore(workdir, step)
  names = list(restored.info.class_names)
  chosen = resolve_classes(classes, names)
  explainer = Explainer(restored, settings)
  files = preprocess.find_images(list(paths))
  images, errors = preprocess.load(files, preprocess.from_config(restored.config), workers)
  output_dir = os.fspath(
    path_layer.makedirs(output_dir or path_layer.join(restored.workdir, "explanations"), "--output_dir")
  )  # a local folder or a gs:// URL
  records, used, readable = [], set(), iter(range(len(images)))
  normalised, scores, probs = explainer.scores(images) if len(images) else (None, None, None)
  for number, (path, error) in enumerate(zip(files, errors)):
    if error is not None:
      records.append({"path": path, "error": error})
      logging.warning("%s: %s", path, error)
      continue
    i = next(readable)
    predicted = restored.task.explained_class(probs[i])
    labels = label_set(restored.task, names, probs[i])
    rows = []
    for c in chosen or [names.index(name) for name, _ in labels or ()] or [predicted]:
      maps = explainer.maps(normalised[i], c, number)
      row = {"class": names[c], "class_index": c, "probability": float(probs[i, c]), "score": float(scores[i, c])}
      if "integrated_gradients" in maps:
        row["integrated_gradients_total"] = float(maps["integrated_gradients"].sum(dtype=np.float64))
        row["score_minus_baseline_score"] = row["score"] - explainer.baseline_score(c)
      rows.append((row, maps))
    png = os.path.join(output_dir, _unique_name(path, used) + ".png")
    record = {
      "path": path,
      "error": None,
      "png": png,
      "predicted": names[predicted],
      "probability": float(probs[i, predicted]),
      "labels": labels,
      "explained": [row for row, _ in rows],
    }
    draw(png, images[i], rows, explainer.methods, os.path.basename(path), prediction_text(record, percent=True))
    records.append(record)
  index = {
    "workdir": restored.workdir,
    "step": restored.step,
    "model": restored.config.model.name,
    "methods": explainer.methods,
    "gradcam_layer": explainer.feature_map.module if explainer.feature_map else None,
    "gradcam_skipped": explainer.gradcam_skipped,
    "settings": dataclasses.asdict(settings),
    "output_dir": output_dir,
    "images": records,
  }
  write_index(output_dir, index)
  return index


def label_set(task, class_names: Sequence[str], probs: np.ndarray) -> list | None:
  """[[label, probability], ...] at or above the task's thresholds, most probable first, for a task whose
  prediction is a label set (multi-label: its `prediction_record` has `labels`); None for a single-label task."""
  labels = task.prediction_record(list(class_names), probs, 1).get("labels")
  return None if labels is None else [[name, float(p)] for name, p in labels]


def prediction_text(record: dict, percent: bool = False) -> str:
  """What a figure title, a printed line and index.md say was predicted: every label of a label set (or that
  none reached its threshold), else the explained class; with its probability."""
  number = (lambda p: f"({p:.1%})") if percent else (lambda p: f"{p:.4f}")
  labels = record.get("labels")
  if labels is None:
    return f"{record['predicted']} {number(record['probability'])}"
  return ", ".join(f"{name} {number(p)}" for name, p in labels) or "no label at or above its threshold"


def summary_lines(index: dict) -> tuple[list[str], list[str]]:
  """(lines for stdout, lines for stderr) the command prints for an `explain_files` index: one line per image
  (its PNG, or on stderr its error), and a last line with the counts and where the index is."""
  out, err = [], []
  if index["gradcam_skipped"]:
    err.append(f"Grad-CAM skipped: {index['gradcam_skipped']}")
  failed = 0
  for record in index["images"]:
    if record["error"]:
      failed += 1
      err.append(f"{record['path']}: error: {record['error']}")
    else:
      explained = ", ".join(f"{row['class']} {row['probability']:.4f}" for row in record["explained"])
      out.append(f"{record['path']}: predicted {prediction_text(record)}; explained {explained} -> {record['png']}")
  out.append(f"{len(index['images']) - failed} explained, {failed} failed; index in {index['output_dir']}/index.md")
  return out, err


def _unique_name(path: str, used: set) -> str:
  stem = os.path.splitext(os.path.basename(path))[0] or "image"
  name, n = stem, 1
  while name in used:
    n += 1
    name = f"{stem}_{n}"
  used.add(name)
  return name


def _display_range(values: np.ndarray, signed: bool) -> tuple[float, float]:
  """Colour limits at the 99th percentile of the magnitudes, so one extreme pixel does not wash out the rest."""
  top = float(np.percentile(np.abs(values), 99)) or float(np.abs(values).max()) or 1.0
  return (-top, top) if signed else (0.0, top)


def draw(path: str, image: np.ndarray, rows: list, methods: Sequence[str], filename: str, predicted: str) -> str:
  """One row per explained class: the input, then each method's map over a dimmed grey copy of it; the title
  names `filename` and `predicted` (`prediction_text`: every predicted label of a multi-label task)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  ncols = 1 + len(methods)
  fig = Figure(figsize=(2.4 * ncols, 2.6 * len(rows) + 0.4), dpi=100, layout="constrained")
  axes = np.asarray(fig.subplots(len(rows), ncols, squeeze=False))
  rgb = image[..., 0] if image.shape[-1] == 1 else image
  grey = image.astype(np.float32).mean(-1)
  fig.suptitle(f"{filename}: predicted {predicted}", fontsize=10)
  for r, (row, maps) in enumerate(rows):
    axes[r, 0].imshow(rgb, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255, interpolation="nearest")
    axes[r, 0].set_title(f"input\nclass {row['class']} ({row['probability']:.1%})", fontsize=8)
    for ax, method in zip(axes[r, 1:], methods):
      signed = method in _SIGNED
      low, high = _display_range(maps[method], signed)
      ax.imshow(grey, cmap="gray", vmin=0, vmax=255 * 2, interpolation="nearest")  # dimmed to half brightness
      shown = ax.imshow(
        maps[method],
        cmap="RdBu_r" if signed else "inferno",
        vmin=low,
        vmax=high,
        alpha=0.7,
        interpolation="bilinear" if method == "gradcam" else "nearest",
      )
      fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
      ax.set_title(f"{TITLES[method]}\n{row['class']} ({row['probability']:.1%})", fontsize=8)
    for ax in axes[r]:
      ax.set_xticks([])
      ax.set_yticks([])
  target = path_layer.path(path, "figure path")
  path_layer.makedirs(target.parent)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  path_layer.write_bytes(target, buffer.getvalue())
  return path


def write_index(output_dir: str, index: dict) -> None:
  """index.json (everything) and index.md (a table a person reads, with the PNGs linked)."""
  folder = path_layer.path(output_dir, "--output_dir")
  path_layer.write_bytes(folder / "index.json", json.dumps(index, indent=1).encode("utf-8", "surrogateescape"))
  lines = [
    f"# Explanations: {index['model']} at step {index['step']}",
    "",
    f"Workdir: `{index['workdir']}`. Methods: {', '.join(TITLES[m] for m in index['methods'])}"
    + (f" (Grad-CAM on `{index['gradcam_layer']}`)" if index["gradcam_layer"] else "")
    + ".",
    "",
    "| file | predicted | explained | figure |",
    "|---|---|---|---|",
  ]
  for record in index["images"]:
    if record["error"]:
      lines.append(f"| `{record['path']}` | error: {record['error']} | | |")
      continue
    explained = ", ".join(f"{row['class']} ({row['probability']:.1%})" for row in record["explained"])
    name = os.path.basename(record["png"])
    lines.append(f"| `{record['path']}` | {prediction_text(record, percent=True)} | {explained} | [{name}]({name}) |")
  path_layer.write_bytes(folder / "index.md", ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
