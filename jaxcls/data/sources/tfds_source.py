"""The `tfds` source: any TensorFlow Datasets classification dataset, read through tf.data.

TensorFlow is imported only inside these functions, so the core trains without it. Nothing is downloaded unless
`dataset.download` is True. Each process reads its own even slice of each split (`tfds.split_for_jax_process`);
images are decoded in parallel, shuffled and prefetched by tf.data. With `dataset.deterministic` (the default)
training order and crops are a pure function of (seed, epoch, position), so resuming at a step skips to exactly
where an uninterrupted run would be; without it tf.data may reorder elements for speed.

For large images, `dataset.train_crop='random_resized'` takes the Inception-style crop while decoding (a JPEG
decodes only the crop window, `decode_and_crop_jpeg`) and `dataset.eval_crop='center'` resizes and crops the centre.
"""

import math
from collections.abc import Iterator

import numpy as np

from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import resize
from jaxcls.data.base import SOURCES, Batch, Dataset, DatasetInfo, check_stream_args
from jaxcls.data.in_memory import pad_batch

# Per-channel (mean, std) in [0, 1] units of well-known datasets; others use 0.5 / 0.5.
KNOWN_STATS = {
  "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
  "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
  "mnist": ((0.1307,), (0.3081,)),
  "fashion_mnist": ((0.2860,), (0.3530,)),
}


def _import_tfds():
  """tensorflow_datasets, with TensorFlow kept off the accelerators (JAX owns them)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(
      "dataset.name='tfds' needs TensorFlow Datasets; install it with `pip install tensorflow-cpu tensorflow-datasets`."
    ) from e
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow already initialised its devices; nothing more to do
    pass
  return tf, tfds


@SOURCES.register("tfds")
def load(config, *, process_index: int, process_count: int) -> "TfdsDataset":
  """Opens `dataset.tfds_name` from `dataset.data_dir`, preparing it only when `dataset.download` is True."""
  ds = config.dataset
  if not ds.tfds_name:
    raise ConfigError("dataset.tfds_name is empty; set it to a TFDS name such as 'cifar10' or 'mnist:3.0.1'.")
  tf, tfds = _import_tfds()
  try:
    builder = tfds.builder(ds.tfds_name, data_dir=ds.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(
      f"dataset.tfds_name={ds.tfds_name!r} is not a TFDS dataset; see "
      "https://www.tensorflow.org/datasets/catalog for names."
    ) from e
  if not builder.is_prepared():
    if not ds.download:
      raise DataError(
        f"TFDS dataset {ds.tfds_name!r} is not prepared in {builder.data_dir}; set "
        f"dataset.download=True, or run `tfds build {ds.tfds_name} --data_dir=...` and set "
        "dataset.data_dir to that folder."
      )
    builder.download_and_prepare()
  return TfdsDataset(tf, tfds, builder, ds, process_index=process_index, process_count=process_count)


class TfdsDataset(Dataset):
  """Batches from a prepared TFDS builder; each process reads `even_splits(split, process_count)[process_index]`."""

  def __init__(self, tf, tfds, builder, dataset_config, *, process_index: int, process_count: int):
    self._tf, self._tfds, self._builder = tf, tfds, builder
    self.process_index, self.process_count = process_index, process_count
    self._train_split, self._eval_split = dataset_config.train_split, dataset_config.eval_split
    self._shuffle_buffer = int(dataset_config.shuffle_buffer)
    self._deterministic = bool(dataset_config.deterministic)
    self._parallel = int(dataset_config.workers) or tf.data.AUTOTUNE
    self._train_crop = dataset_config.train_crop
    self._eval_crop = dataset_config.eval_crop
    self._crop_fraction = float(dataset_config.center_crop_fraction)
    self._crop_area = tuple(float(a) for a in dataset_config.crop_area)
    self._crop_aspect = tuple(float(a) for a in dataset_config.crop_aspect)
    if self._train_crop not in ("resize", "random_resized") or self._eval_crop not in ("resize", "center"):
      raise ConfigError(
        f"dataset.train_crop={self._train_crop!r} / eval_crop={self._eval_crop!r} are not valid; "
        "use 'resize' or 'random_resized' for training and 'resize' or 'center' for eval."
      )
    self._image_key, self._label_key = self._feature_keys()
    native = builder.info.features[self._image_key].shape
    self._size = resize.parse_image_size(dataset_config.image_size)
    if self._size is None and (None in native[:2] or self._train_crop != "resize" or self._eval_crop != "resize"):
      raise ConfigError(
        f"Images of TFDS dataset {builder.name!r} vary in size (or are cropped); set "
        "dataset.image_size to the (height, width) the model should see."
      )
    height, width = self._size or native[:2]
    channels = native[2] or 3
    labels = builder.info.features[self._label_key]
    mean, std = KNOWN_STATS.get(builder.name, ((0.5,) * channels, (0.5,) * channels))
    self.info = DatasetInfo(
      num_classes=labels.num_classes,
      class_names=tuple(labels.names),
      image_shape=(height, width, channels),
      num_train=self._split_size(self._train_split),
      num_eval=self._split_size(self._eval_split),
      mean=mean,
      std=std,
    )

  def _feature_keys(self) -> tuple[str, str]:
    """(image feature, label feature): the builder's supervised keys, else 'image' and 'label'."""
    info = self._builder.info
    keys = info.supervised_keys if isinstance(info.supervised_keys, tuple) else ("image", "label")
    image_key, label_key = keys[:2]
    features = info.features
    if not isinstance(image_key, str) or image_key not in features or label_key not in features:
      raise DataError(
        f"TFDS dataset {self._builder.name!r} has no (image, label) features (it has "
        f"{', '.join(features.keys())}); use a supervised image classification dataset."
      )
    if not hasattr(features[label_key], "num_classes"):
      raise DataError(
        f"TFDS dataset {self._builder.name!r}: feature {label_key!r} is not a ClassLabel; use an "
        "image classification dataset."
      )
    if not hasattr(features[image_key], "decode_example") or len(features[image_key].shape) != 3:
      raise DataError(
        f"TFDS dataset {self._builder.name!r}: feature {image_key!r} is not an image; use an "
        "image classification dataset."
      )
    return image_key, label_key

  def _split_size(self, split) -> int:
    try:
      return self._builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as e:
      known = ", ".join(self._builder.info.splits.keys())
      raise ConfigError(
        f"Split {split!r} is not in TFDS dataset {self._builder.name!r} (it has {known}); set "
        "dataset.train_split / eval_split to one of those."
      ) from e

  def _shard(self, split: str, process_index: int):
    return self._tfds.split_for_jax_process(split, process_index=process_index, process_count=self.process_count)

  def _read(self, shard, *, shuffle_seed: int | None):
    """Undecoded (image bytes, label) records of one shard; files shuffled by `shuffle_seed` when given."""
    tfds = self._tfds
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False)
    ds = self._builder.as_dataset(
      split=shard,
      shuffle_files=shuffle_seed is not None,
      read_config=read_config,
      decoders={self._image_key: tfds.decode.SkipDecoding()},
    )
    options = self._tf.data.Options()
    options.deterministic = self._deterministic
    return ds.with_options(options)

  def _decode(self, example, seed=None, *, crop: str = "resize"):
    """uint8 [h, w, c] image (cropped and resized as configured) and int32 label.

    `seed` ([2] int64) draws the random resized crop, so each example's crop is fixed by its position.
    """
    tf = self._tf
    encoded = example[self._image_key]
    if crop == "random_resized":
      image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: self._jpeg_random_crop(encoded, seed),
        lambda: self._random_crop(self._decode_full(encoded), seed),
      )
    elif crop == "center":
      image = self._center_crop(self._decode_full(encoded))
    else:
      image = self._decode_full(encoded)
    if self._size is not None:
      image = tf.image.resize(image, self._size, method="bilinear", antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return {"image": image, "label": tf.cast(example[self._label_key], tf.int32)}

  def _decode_full(self, encoded):
    return self._builder.info.features[self._image_key].decode_example(encoded)

  def _crop_box(self, shape, seed):
    """(begin, size) of an Inception-style random crop of an image of `shape`, drawn statelessly from `seed`."""
    tf = self._tf
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      tf.zeros([1, 0, 4], tf.float32),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=self._crop_aspect,
      area_range=self._crop_area,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
    )
    return begin, size

  def _jpeg_random_crop(self, encoded, seed):
    """Decodes only the crop window of a JPEG: for large photos most of the decode work is never done."""
    tf = self._tf
    begin, size = self._crop_box(tf.io.extract_jpeg_shape(encoded), seed)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.image.decode_and_crop_jpeg(encoded, window, channels=self.info.image_shape[2])

  def _random_crop(self, image, seed):
    begin, size = self._crop_box(self._tf.shape(image), seed)
    return self._tf.slice(image, begin, size)

  def _center_crop(self, image):
    """The centre of the image with the target's aspect ratio, `center_crop_fraction` of the largest such box."""
    tf = self._tf
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = tf.constant(self._size, tf.float32)
    scale = tf.reduce_min(shape / target) * self._crop_fraction
    crop = tf.maximum(tf.cast(tf.round(target * scale), tf.int32), 1)
    offset = (tf.shape(image)[:2] - crop) // 2
    return tf.slice(image, tf.concat([offset, [0]], 0), tf.concat([crop, [-1]], 0))

  def train_batches(self, global_batch_size: int, *, start_step: int = 0, seed: int = 0) -> Iterator[Batch]:
    """Checks the arguments at the call; epochs read this process's shard, shuffled by (seed, epoch)."""
    check_stream_args(start_step, seed)
    local = self.local_batch_size(global_batch_size)
    steps = self.steps_per_epoch(global_batch_size)
    return self._train_stream(local, steps, start_step, seed)

  def _train_stream(self, local, steps, start_step, seed):
    shard = self._shard(self._train_split, self.process_index)
    epoch, skip = divmod(start_step, steps)
    while True:
      # Every process takes `steps` local batches per epoch: its shard holds at least steps * local examples.
      epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
      ds = self._read(shard, shuffle_seed=epoch_seed)
      ds = ds.shuffle(self._shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
      ds = ds.take(steps * local).enumerate().skip(skip * local)  # positions fix each example's crop
      decode = lambda position, example, s=epoch_seed: self._decode(
        example, self._tf.stack([self._tf.constant(s, self._tf.int64), position]), crop=self._train_crop
      )
      ds = ds.map(decode, num_parallel_calls=self._parallel, deterministic=self._deterministic)
      ds = ds.batch(local, drop_remainder=True).prefetch(self._tf.data.AUTOTUNE)
      for batch in ds.as_numpy_iterator():
        yield {"image": batch["image"], "label": batch["label"], "mask": np.ones(local, bool)}
      epoch, skip = epoch + 1, 0

  def eval_batches(self, global_batch_size: int) -> Iterator[Batch]:
    """This process's shard of the eval split, padded, then all-masked batches up to `num_eval_batches`."""
    local = self.local_batch_size(global_batch_size)
    return self._eval_stream(local, self.num_eval_batches(global_batch_size))

  def _eval_stream(self, local, total):
    ds = self._read(self._shard(self._eval_split, self.process_index), shuffle_seed=None)
    ds = ds.map(lambda example: self._decode(example, crop=self._eval_crop), num_parallel_calls=self._parallel)
    ds = ds.batch(local).prefetch(self._tf.data.AUTOTUNE)
    count = 0
    for batch in ds.as_numpy_iterator():
      count += 1
      if count > total:
        raise DataError(
          f"TFDS split {self._eval_split!r} of {self._builder.name!r} yields more examples than its "
          "metadata records; re-prepare the dataset."
        )
      yield pad_batch(
        {"image": batch["image"], "label": batch["label"], "mask": np.ones(len(batch["label"]), bool)}, local
      )
    empty = {
      "image": np.zeros((local,) + self.info.image_shape, np.uint8),
      "label": np.zeros(local, np.int32),
      "mask": np.zeros(local, bool),
    }
    for _ in range(total - count):  # shorter shards still take part in every collective eval step
      yield {key: value.copy() for key, value in empty.items()}

  def num_eval_batches(self, global_batch_size: int) -> int:
    """Batches of the largest process shard, so processes with shorter shards still take part in every eval step."""
    local = self.local_batch_size(global_batch_size)
    sizes = [self._split_size(self._shard(self._eval_split, p)) for p in range(self.process_count)]
    return max(math.ceil(n / local) for n in sizes)
