"""The shared base config: every key jaxcls reads, with its default.

Experiment files in configs/ start from `get_base_config()` and change a few values. Keys that are not here
(a misspelling) are rejected by `config_check.validate`; `model.*` keys are the chosen model's own arguments and
are checked against that model's signature instead.
"""

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
  """A fresh ConfigDict of every key with its default; configs/*.py change a few of them."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Your own modules, imported before anything is built, so the models, tasks, sources, augmentations, evaluators
  # and writers they register (jaxcls.register_model, ...) can be named below: module names on the Python path
  # (the current folder included) or .py files, e.g. ('my_models',) or 'my_models,lab.tasks' on the command line.
  # Recorded in config.json, so evaluate, predict, export and fine-tuning import them too (docs/extensions.md).
  config.imports = config_dict.FieldReference((), field_type=object)

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "digits"  # 'digits' | 'arrays' | 'synthetic' | 'tfds' | 'folder' | 'idx'
  config.dataset.path = ""  # arrays: an .npz file, or a folder of {split}.npz files;
  # folder: one subfolder per class; idx: the idx files' folder
  config.dataset.image_key = "images"  # arrays: array names inside the .npz files
  config.dataset.label_key = "labels"
  config.dataset.group_key = "groups"  # arrays: optional array of group names per image (per-group metrics)
  config.dataset.tfds_name = ""  # tfds: e.g. 'cifar10', 'mnist:3.0.1'
  config.dataset.data_dir = ""  # tfds: where prepared data lives ('' = TFDS default)
  config.dataset.download = False  # tfds: download and prepare if missing (never by default)
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.test_fraction = 0.2  # held-out fraction when a source has no test split
  config.dataset.split_seed = 0  # seed of that stratified split (fixed, independent of `seed`)
  config.dataset.image_size = config_dict.placeholder(tuple)  # (height, width) the model sees; None = native
  config.dataset.class_names = config_dict.placeholder(tuple)  # override the source's class names
  config.dataset.mean = config_dict.placeholder(tuple)  # per-channel, in [0, 1]; None = the source's own
  config.dataset.std = config_dict.placeholder(tuple)
  config.dataset.shuffle_buffer = 16_384  # tfds: examples in the shuffle buffer
  config.dataset.sampling = "uniform"  # 'uniform' | 'balanced' (each class equally often; in-memory data)
  config.dataset.deterministic = True  # tfds: fixed tf.data order (exact resume); False is a bit faster
  config.dataset.idx_transpose = False  # idx: images stored column-major (EMNIST)
  config.dataset.val_fraction = 0.0  # folder without split folders: also hold out a 'val' split
  config.dataset.labels_file = ""  # folder: a CSV/JSON of image paths -> labels (multi-label sets,
  # groups, splits) instead of class subfolders; see data/label_file.py
  config.dataset.label_separator = ""  # folder: what splits a CSV 'labels' field ('' = ';'; ' ' = spaces)
  config.dataset.class_depth = 1  # folder: 1 = class folders; 2 = coarse/fine/ folders (hierarchical)
  config.dataset.cache = "auto"  # folder: 'memory' | 'file' (decoded once into .npy files) | 'none'
  config.dataset.cache_limit_mb = 2048  #   'auto' = 'memory' below this decoded size, else 'none' (stream)
  config.dataset.cache_dir = ""  # folder, cache='file': where the arrays go ('' = ~/.cache/jaxcls)
  config.dataset.workers = 0  # folder / tfds: decode threads (0 = one per CPU core)
  config.dataset.decode_processes = 0  # folder: decode in N spawned worker processes instead of `workers` threads
  # (0 = threads). Pays on hosts with many cores, where the GIL caps threads at a few cores' worth of decoding;
  # costs a second or two of start-up and a copy of each image. Batches do not depend on it; other sources refuse
  # a value > 0 (docs/input_pipeline.md)
  config.dataset.max_image_pixels = 89_478_485  # folder: larger images are refused as decompression bombs
  config.dataset.train_crop = "resize"  # folder (streaming) / tfds: 'resize' | 'random_resized'
  config.dataset.crop_area = (0.08, 1.0)  #   random_resized: fraction of the image area kept
  config.dataset.crop_aspect = (0.75, 4 / 3)  #   random_resized: aspect ratio range (width / height)
  config.dataset.eval_crop = "resize"  # folder (streaming) / tfds: 'resize' | 'center'
  config.dataset.center_crop_fraction = 0.875  #   center: crop side as a fraction of the resized side
  # synthetic: random images, for benchmarks and tests
  config.dataset.num_classes = 10
  config.dataset.num_train_examples = 1024
  config.dataset.num_eval_examples = 256
  config.dataset.channels = 3

  config.model = ml_collections.ConfigDict()
  config.model.name = "simple_cnn"  # registry name; other keys are that model's arguments

  config.task = ml_collections.ConfigDict()
  config.task.type = "multiclass"
  config.task.label_smoothing = 0.0
  # 'none' | 'balanced' (inverse frequency, averaging 1 over the training examples) | a tuple, one per class
  config.task.class_weights = config_dict.FieldReference("none", field_type=object)
  config.task.threshold = 0.5  # binary: decision threshold on the sigmoid probability
  config.task.positive_class = ""  # binary: the positive class's name ('' = the second, in name order)
  config.task.loss_type = "bce"  # multilabel: 'bce' | 'focal' | 'asymmetric'
  config.task.focal_gamma = 2.0  # multilabel, focal
  config.task.asl_gamma_neg = 4.0  # multilabel, asymmetric
  config.task.asl_gamma_pos = 0.0
  config.task.asl_clip = 0.05
  config.task.thresholds = config_dict.FieldReference(0.5, field_type=object)  # multilabel: one, or per label
  # hierarchical: 'folders' (class names are 'coarse/fine' paths), a JSON file, or one ancestor path per class
  config.task.tree = config_dict.FieldReference("folders", field_type=object)
  config.task.level_weights = ()  # hierarchical: loss weight per level, coarsest first (() = all 1)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # 'sgd' | 'adamw' | 'muon' (docs/optimizers.md)
  config.optimizer.learning_rate = 0.1  # peak learning rate, for the global batch (muon: the Muon part's)
  config.optimizer.momentum = 0.9  # sgd, and muon's sgd fallback
  config.optimizer.nesterov = True  # sgd and muon
  config.optimizer.b1 = 0.9  # adamw, and muon's adamw fallback
  config.optimizer.b2 = 0.999  # adamw, and muon's adamw fallback
  config.optimizer.eps = 1e-8  # adamw, and muon's adamw fallback
  config.optimizer.weight_decay = 5e-4  # decoupled; biases and normalisation scales are not decayed
  config.optimizer.schedule = "cosine"  # 'cosine' | 'linear' | 'step' | 'constant'
  config.optimizer.warmup_steps = 0
  config.optimizer.end_learning_rate_factor = 0.0  # cosine / linear: final rate as a fraction of the peak
  config.optimizer.step_boundaries = (0.5, 0.75)  # step: fractions of training where the rate drops
  config.optimizer.step_factor = 0.1  # step: multiplier at each boundary
  config.optimizer.grad_clip_norm = 0.0  # clip the global gradient norm; 0 = off
  config.optimizer.backbone_lr_factor = 1.0  # the backbone's (all but the head's) rate as a fraction of the head's;
  # 0 = frozen: no update, no decay, batch norm in inference mode
  config.optimizer.muon_momentum = 0.95  # muon: momentum of the orthogonalised part (airbench: 0.6)
  config.optimizer.muon_ns_steps = 5  # muon: Newton-Schulz iterations per step (airbench: 3)
  config.optimizer.muon_fallback = "adamw"  # muon: optimizer of the head, biases, norms, embeddings: 'adamw' | 'sgd'
  config.optimizer.muon_fallback_learning_rate = config_dict.placeholder(float)  # muon: the fallback's peak rate;
  # None = learning_rate. Same schedule shape as the Muon part
  config.optimizer.muon_normalize_weights = False  # muon: rescale each Muon kernel to norm sqrt(outputs) before
  # its step (airbench94_muon; for nets with batch norm after convs)

  config.augment = ""  # ops applied on the device, e.g. 'random_crop(padding=4)|flip_lr'

  config.batch_size = 128  # global, over all devices and hosts
  config.eval_batch_size = config_dict.placeholder(int)  # None = batch_size
  config.prefetch_to_device = -1  # batches copied to the devices ahead of the step by a thread;
  # 0 = off, -1 = auto (2 on GPU/TPU, off on CPU, where the thread
  # costs more than it hides)
  config.transfer_guard = "allow"  # jax.transfer_guard level of the steps between log points:
  # 'disallow' makes any implicit host <-> device copy there an
  # error (a hidden per-step sync); 'log' logs each one
  config.num_epochs = 10.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0 = once per epoch, -1 = only at the end; evaluation also
  # runs at the end
  config.checkpoint_every_steps = 0  # 0 = once per epoch, -1 = only at the end (and when preempted);
  # a checkpoint is also written at the end
  config.checkpoint_every_secs = 0.0  # > 0: also a checkpoint when this much wall time passed since the
  # last one (a long run's insurance against a crash); 0 = off
  config.keep_checkpoints = 3  # the newest N checkpoints are kept (>= 1), plus the best one:
  config.best_metric = "eval/accuracy"  # the evaluation scalar that ranks checkpoints; '' = keep no best.
  # An evaluation that beats every kept checkpoint is saved at once
  # (even off the cadence); --step best picks it (docs/checkpoints.md)
  config.best_mode = "max"  # 'max' (accuracy, F1, ...) | 'min' (loss, error rates)
  config.async_checkpointing = True
  config.dtype = "float32"  # computation dtype: 'float32' | 'bfloat16'
  config.ema_decay = 0.0  # > 0 keeps an exponential moving average of the params
  config.eval_tta = "none"  # test-time augmentation at eval, predict and export: 'none' |
  # 'flip' (mirror; 2 passes) | 'flip_translate' (airbench: 6 passes);
  # logits are averaged (jaxcls/models/tta.py, docs/tta.md)

  config.evaluators = config_dict.FieldReference(("classification",), field_type=object)  # evaluators by name:
  # ('fewshot',) or 'fewshot' on the command line; each reads its
  # own section below (jaxcls/evaluation/evaluators.py registers them)
  config.fewshot = ml_collections.ConfigDict()  # few-shot ridge + k-NN on penultimate features (docs/fewshot.md)
  config.fewshot.every_steps = 0  # every N steps and at the end; 0 = with every evaluation
  config.fewshot.shots = (1, 5, 10, 25)  # training examples per class for the ridge classifier
  config.fewshot.seeds = 3  # shot draws per shot count (mean and std reported)
  config.fewshot.l2_reg = 1024.0  # ridge penalty on the standardised features
  config.fewshot.knn_k = (1, 10)  # k-NN neighbour counts; () = none
  config.fewshot.knn_metric = "cosine"  # 'cosine' | 'euclidean'
  config.fewshot.train_examples = 10_000  # training examples kept (whole batches); 0 = one epoch
  config.fewshot.batch_size = 0  # feature-extraction batch; 0 = eval_batch_size

  # Transfer learning (docs/transfer.md). Applies only while the workdir has no checkpoint of its own.
  config.init_from = ""  # '' = random init; a jaxcls workdir, its checkpoints/<step> folder,
  # or a .msgpack/.npz written by `python -m jaxcls.convert`
  config.init_from_step = config_dict.FieldReference(-1, field_type=object)  # the workdir's checkpoint to
  # start from: a step, -1 or 'latest', or 'best' (by its best_metric)
  config.init_head = "auto"  # 'auto': keep the loaded head if it fits the same classes, else a new
  # one | 'keep' (must fit) | 'reinit' (always a new head)
  config.head_modules = ()  # the head's parameter modules, e.g. ('fc',); () = found by itself
  # (the layers whose shapes depend on the class count)
  # Metric writers by name, in order: 'tensorboard' (event files, tensorboard package, no TensorFlow),
  # 'jsonl' (DIR/metrics.jsonl), 'log' (the log), 'mlflow', 'wandb' (trackers, each with its section below),
  # 'clu' (clu's TensorFlow summary writer; needs the tf extra)
  config.writers = config_dict.FieldReference(("tensorboard", "jsonl", "log"), field_type=object)
  config.mlflow = ml_collections.ConfigDict({"tracking_uri": "", "experiment": "jaxcls"})  # 'mlflow' writer; '' =
  # $MLFLOW_TRACKING_URI, else sqlite:///DIR/mlflow.db (docs/writers.md)
  config.wandb = ml_collections.ConfigDict({"project": "jaxcls", "entity": ""})  # 'wandb' writer (WANDB_MODE=offline)
  config.compilation_cache_dir = "auto"  # JAX persistent compilation cache folder: reruns and resumed runs
  # load compiled steps from it instead of compiling. 'auto' =
  # $JAXCLS_CACHE_DIR or ~/.cache/jaxcls/xla (kept under 2 GiB);
  # '' = off (jaxcls/core/compile_cache.py)
  # A workdir that holds a run resumes only with the same training config (docs/workdir.md); True continues it
  # with the changed values and records the change (and the earlier config) in DIR/config_history.jsonl.
  config.allow_config_change = False
  return config
