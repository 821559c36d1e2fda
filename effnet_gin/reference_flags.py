"""The reference's command-line flags, as aliases of effnet_gin's gin bindings.

tensorflow/tpu's `main.py` (and the README that drives it) configures a run
with flags; effnet_gin configures it with gin. `ALIASES` is the one table that
says which binding each of the reference's flags means, so a reference command
line runs unchanged after `main.py` → `bin/trainer` (and `--mode=eval` →
`bin/evaluator`, or `bin/trainer --mode=eval`). `SYNONYMS` are flags that are
another name of one of ours (`--tpu_zone` is `--zone`), and `IGNORED` lists
the reference's flags that mean nothing here: they are accepted, so the
command line still runs, and each one given is logged with the reason.

The input-source flags (`--data_dir`, `--bigtable_*`, eval_ckpt_main's
`--imagenet_eval_*`) select a source as well as set it, so they are
translated together by `reference_sources.source_bindings`.

This module knows neither gin nor absl: `effnet_gin.cli` defines the flags
from the table and applies the binding strings it returns.
"""
import dataclasses
from typing import Any, Callable, Optional, Tuple

from effnet_gin import reference_sources

_TRAIN = "effnet_gin.train.train"
_EVALUATE = "effnet_gin.train.evaluate"
_EXPORT = "effnet_gin.train.export"
_MODEL = "effnet_gin.model.build_model"
_DATASET = "effnet_gin.data.build_dataset"
_SCHEDULE = "effnet_gin.train.build_schedule"
_OPTIMIZER = "effnet_gin.train.build_optimizer"
_STRATEGY = "effnet_gin.train.build_strategy"
_BIGTABLE = "effnet_gin.data.BigtableSource"
_GLOB = "effnet_gin.data.ImageGlobSource"


@dataclasses.dataclass(frozen=True)
class Alias:
  """One reference flag and the gin binding(s) it sets.

  Attributes:
    flag: the flag's name, as the reference spells it.
    type: 'integer', 'float', 'string' or 'bool' (how the flag parses).
    keys: the binding keys (a macro such as `TRAIN_STEPS`, or
      `selector.parameter`) the flag's value is bound to.
    help: the flag's help text.
    convert: maps the flag's value to the gin value; it may instead return
      a dict {binding key: value} when the value decides which keys to set
      (an empty dict sets nothing).
    positive: the value must be > 0.
    tools: the bin/ tools that take the flag (None: every gin-configured
      one): the flags of `eval_ckpt_main.py` and `export_model.py` are
      bin/evaluator's and bin/exporter's only.
  """
  flag: str
  type: str
  keys: Tuple[str, ...]
  help: str
  convert: Optional[Callable[[Any], Any]] = None
  positive: bool = False
  tools: Optional[Tuple[str, ...]] = None

  def bindings(self, value):
    """The gin binding strings for `value`.

    Args:
      value: the parsed flag value.

    Returns:
      A list of strings such as "TRAIN_STEPS = 2".

    Raises:
      ValueError: for a value the flag does not accept.
    """
    if self.positive and value <= 0:
      raise ValueError(f"--{self.flag} must be positive, got {value}")
    converted = self.convert(value) if self.convert else value
    if isinstance(converted, dict):
      return [f"{key} = {gin_value!r}" for key, gin_value in converted.items()]
    return [f"{key} = {converted!r}" for key in self.keys]


def _mode(value):
  if value not in ("train", "train_and_eval", "eval"):
    raise ValueError(f"--mode must be train, train_and_eval or eval, got "
                     f"{value!r}")
  # eval is a different job, not a setting of train(): the tool runs it.
  return {} if value == "eval" else {f"{_TRAIN}.mode": value}


def _use_tpu(value):
  return "tpu" if value else "auto"


def _bfloat16(value):
  return "mixed_bfloat16" if value else "float32"


def _lr_schedule(value):
  return "polynomial" if value == "poly" else value


def _moving_average_decay(value):
  if value > 0:
    return {"effnet_gin.train.ExponentialMovingAverage.decay": value}
  # The reference's "0 disables the moving average", in all three tools.
  return {
      f"{_TRAIN}.use_ema": False,
      f"{_EVALUATE}.use_ema": False,
      f"{_EXPORT}.use_ema": False
  }


def _augment(value):
  return None if value in ("", "None", "none") else value


def _a(flag, type_, keys, help_, convert=None, positive=False, tools=None):
  keys = (keys,) if isinstance(keys, str) else tuple(keys)
  return Alias(flag, type_, keys, help_, convert, positive, tools)


def _runmode(value):
  if value != "imagenet":
    raise ValueError(f"--runmode={value!r}: bin/evaluator runs "
                     "eval_ckpt_main's imagenet mode (with "
                     "--imagenet_eval_glob); to classify example images use "
                     "bin/predict")
  return {}


def _include_background_label(value):
  # The checkpoint's class 0 is the background: a file label l is class
  # l + 1 of the model, as in the reference's label_offset.
  return -1 if value else 0


ALIASES = (
    # Hardware.
    _a("tpu", "string", f"{_STRATEGY}.tpu",
       "Cloud TPU name, grpc:// address, or 'local' on a TPU VM."),
    _a("zone", "string", f"{_STRATEGY}.zone", "GCE zone of the Cloud TPU."),
    _a("project", "string", f"{_STRATEGY}.project", "GCP project of the "
       "Cloud TPU; the default for --bigtable_project."),
    _a("use_tpu", "bool", f"{_STRATEGY}.kind", "true: strategy kind 'tpu'; "
       "false: 'auto' (the devices at hand).", _use_tpu),
    _a("use_bfloat16", "bool",
       (f"{_TRAIN}.precision", f"{_EVALUATE}.precision"),
       "true: mixed_bfloat16, false: float32 (train and evaluate).", _bfloat16),
    # Model.
    _a("model_name", "string", "MODEL_NAME", "Variant, e.g. efficientnet-b3."),
    _a(
        "input_image_size", "integer", "IMAGE_SIZE", "Resolution of model, "
        "input pipeline, evaluator and exporter (default: the variant's).",
        positive=True),
    _a("num_label_classes", "integer", "NUM_CLASSES", "Number of classes.",
       positive=True),
    _a("dropout_rate", "float", f"{_MODEL}.dropout_rate",
       "Dropout before the classifier."),
    _a("survival_prob", "float", f"{_MODEL}.survival_prob",
       "Stochastic-depth survival probability of the last block."),
    _a("depth_coefficient", "float", f"{_MODEL}.depth_coefficient",
       "Depth multiplier (default: the variant's)."),
    _a("width_coefficient", "float", f"{_MODEL}.width_coefficient",
       "Width multiplier (default: the variant's)."),
    _a("batch_norm_momentum", "float", f"{_MODEL}.batch_norm_momentum",
       "Batch-norm moving-average momentum."),
    _a("batch_norm_epsilon", "float", f"{_MODEL}.batch_norm_epsilon",
       "Batch-norm epsilon."),
    _a(
        "batch_norm_batch_size", "integer",
        "effnet_gin.model.distributed_batch_norm.batch_norm_batch_size",
        "Images per batch-norm group of the distributed batch norm "
        "(b0_tpu_pod.gin's, the reference's with --optimizer=lars)."),
    # Data.
    _a("num_train_images", "integer", "NUM_TRAIN_IMAGES",
       "Size of the training set (an epoch).", positive=True),
    _a("num_eval_images", "integer", "NUM_EVAL_IMAGES",
       "Validation images evaluated.", positive=True),
    _a(
        "holdout_shards", "integer", "HOLDOUT_TRAIN_SHARDS",
        "Training shards held out as the validation split (their images "
        "move from the train to the eval count)."),
    _a("augment_name", "string", f"{_DATASET}.augment",
       "autoaugment or randaugment (default: none).", _augment),
    _a("randaug_num_layers", "integer", f"{_DATASET}.randaugment_layers",
       "RandAugment: ops per image."),
    _a("randaug_magnitude", "integer", f"{_DATASET}.randaugment_magnitude",
       "RandAugment: magnitude."),
    _a("mixup_alpha", "float", f"{_DATASET}.mixup_alpha",
       "Mixup Beta(alpha, alpha); 0 disables it."),
    _a("use_cache", "bool", f"{_DATASET}.cache",
       "Cache the encoded training examples in memory."),
    _a("bigtable_train_prefix", "string", f"{_BIGTABLE}.train_prefix",
       "Row-key prefix of the training rows."),
    _a("bigtable_eval_prefix", "string", f"{_BIGTABLE}.eval_prefix",
       "Row-key prefix of the validation rows."),
    _a("bigtable_column_family", "string", f"{_BIGTABLE}.column_family",
       "Column family holding the tf.Examples."),
    _a("bigtable_column_qualifier", "string", f"{_BIGTABLE}.column_qualifier",
       "Column holding the tf.Examples."),
    # Run length and loop.
    _a(
        "mode", "string", f"{_TRAIN}.mode", "train, train_and_eval (evaluate "
        "every --steps_per_eval steps in this process), or eval (bin/trainer "
        "runs the evaluator).", _mode),
    _a(
        "train_steps", "integer", "TRAIN_STEPS", "Total training steps "
        "(reference: 218949); the evaluator stops after this step.",
        positive=True),
    _a("train_batch_size", "integer", "TRAIN_BATCH_SIZE",
       "Global training batch size (reference: 2048).", positive=True),
    _a("eval_batch_size", "integer", "EVAL_BATCH_SIZE",
       "Global evaluation batch size.", positive=True),
    _a("iterations_per_loop", "integer", "STEPS_PER_LOOP",
       "Steps compiled into one host call.", positive=True),
    _a("steps_per_eval", "integer", f"{_TRAIN}.steps_per_eval",
       "train_and_eval: steps between evaluations.", positive=True),
    _a(
        "eval_timeout", "float", f"{_EVALUATE}.eval_timeout", "Stop evaluating "
        "when no new checkpoint appeared for this many seconds."),
    _a("log_step_count_steps", "integer", f"{_TRAIN}.log_every_steps",
       "Log the step and loss every this many steps.", positive=True),
    # Optimisation.
    _a("base_learning_rate", "float", f"{_SCHEDULE}.base_learning_rate",
       "Learning rate per 256 images of global batch."),
    _a("lr_schedule", "string", f"{_SCHEDULE}.kind", "exponential, cosine, "
       "constant or poly (= polynomial).", _lr_schedule),
    _a("lr_decay_epoch", "float", f"{_SCHEDULE}.decay_epochs",
       "Epochs between exponential decays."),
    _a("lr_decay_factor", "float", f"{_SCHEDULE}.decay_factor",
       "Exponential decay factor."),
    _a("lr_warmup_epochs", "float", f"{_SCHEDULE}.warmup_epochs",
       "Epochs of linear warm-up."),
    _a("optimizer", "string", f"{_OPTIMIZER}.name",
       "rmsprop, momentum, sgd, adam or lars."),
    _a("lars_weight_decay", "float", f"{_OPTIMIZER}.lars_weight_decay",
       "LARS's own weight decay."),
    _a("lars_epsilon", "float", f"{_OPTIMIZER}.lars_epsilon", "LARS epsilon."),
    _a("weight_decay", "float", f"{_TRAIN}.weight_decay",
       "L2 weight decay of the loss."),
    _a("label_smoothing", "float", f"{_TRAIN}.label_smoothing",
       "Label smoothing of the cross-entropy."),
    _a("moving_average_decay", "float",
       "effnet_gin.train.ExponentialMovingAverage.decay",
       "EMA decay of the weights; 0 disables the EMA (train, eval, export).",
       _moving_average_decay),
    # eval_ckpt_main.py (bin/evaluator) and export_model.py (bin/exporter).
    _a("enable_ema", "bool", (f"{_EVALUATE}.use_ema", f"{_EXPORT}.use_ema"),
       "Evaluate or export the EMA weights.", tools=("evaluator", "exporter")),
    _a(
        "runmode", "string", (), "eval_ckpt_main's mode: only 'imagenet' "
        "(with --imagenet_eval_glob) is bin/evaluator's.", _runmode,
        tools=("evaluator",)),
    _a(
        "include_background_label", "bool", f"{_GLOB}.label_offset",
        "The checkpoint's class 0 is the background class: compare file "
        "label l with class l + 1.", _include_background_label,
        tools=("evaluator",)),
    _a("image_size", "integer", "IMAGE_SIZE", "Resolution of the export "
       "(export_model's; default: the variant's).", positive=True,
       tools=("exporter",)),
    _a(
        "num_steps", "integer", "effnet_gin.train.export_lite."
        "calibration_images", "int8: eval images to calibrate on (the "
        "reference's steps of --batch_size 1).", positive=True,
        tools=("exporter",)),
)

BY_FLAG = {alias.flag: alias for alias in ALIASES}

# Another name of one of our flags: {reference name: our name}.
SYNONYMS = {"tpu_zone": "zone", "gcp_project": "project"}

# Another name of a flag of one tool: {tool: {reference name: (type, our
# flag)}}; the tool reads the value with `command_line.tool_flag`.
TOOL_SYNONYMS = {
    "evaluator": {
        "ckpt_dir": ("string", "checkpoint")
    },
    "exporter": {
        "ckpt_dir": ("string", "checkpoint"),
        "endpoint_name": ("string", "endpoint"),
        "output_saved_model_dir": ("string", "export_dir"),
    },
}

# The reference's flags that mean nothing here: {flag: (type, why)}.
IGNORED = {
    "tpu_job_name": ("string", "the TPU resolver finds the worker job"),
    "eval_name": ("string", "evaluation results go to model_dir/eval"),
    "archive_ckpt": ("bool", "the evaluator always keeps the best "
                     "checkpoint in model_dir/best"),
    "skip_host_call": ("bool", "summaries are written between loops, at no "
                       "cost to the steps"),
    "num_parallel_calls": ("integer", "tf.data tunes its parallelism"),
    "data_format": ("string", "the model is channels_last; XLA picks the "
                    "device layout"),
    "transpose_input": ("bool", "XLA picks the device layout"),
    "export_to_tpu": ("bool", "the SavedModel is device-neutral"),
    "use_async_checkpointing": ("bool", "checkpoints are saved between "
                                "loops"),
    "num_replicas": ("integer", "the strategy counts the replicas"),
}

# The reference's flags of one tool that mean nothing here: {tool: {flag:
# (type, why)}}.
TOOL_IGNORED = {
    "evaluator": {
        "export_ckpt": ("string", "checkpoints are effnet_gin's already; "
                        "bin/import_checkpoint converts the reference's"),
        "advprop_preprocessing": ("bool", "bind build_model."
                                  "input_normalization = 'advprop' (what "
                                  "bin/import_checkpoint --advprop writes "
                                  "in model.gin)"),
    },
}

# The reference's flags of one tool that effnet_gin does another way: given,
# they stop the tool with the way. {tool: {flag: (type, what to give)}}.
TOOL_REFUSED = {
    "exporter": {
        "output_tflite": ("string", "give --export_dir=DIR and --format="
                          "tflite_int8 (or tflite): the model is written to "
                          "DIR/model.tflite, beside DIR/metadata.json"),
        "quantize": ("bool", "give --format=tflite_int8 (quantized) or "
                     "--format=tflite (float)"),
    },
}

# Flags that select and configure the input source, translated together
# (`reference_sources`).
SOURCE_FLAGS = reference_sources.SOURCE_FLAGS
GLOB_FLAGS = reference_sources.GLOB_FLAGS
source_bindings = reference_sources.source_bindings


def flag_bindings(values, *, emit=None):
  """The gin bindings of the given flag values, in their order.

  Args:
    values: {flag name: value} of the flags given (None values are skipped);
      names in `IGNORED` or unknown to this module are skipped too.
    emit: if given, only these flags produce bindings (the others still
      give context, e.g. `project` to `bigtable_instance`); the source
      flags are emitted together, with the last of them present in `emit`.

  Returns:
    A list of gin binding strings.

  Raises:
    ValueError: for a value a flag does not accept, or contradictory source
      flags.
  """
  values = {
      SYNONYMS.get(name, name): value
      for name, value in values.items()
      if value is not None
  }
  emit = set(values) if emit is None else {SYNONYMS.get(n, n) for n in emit}
  sources = {name: values[name] for name in SOURCE_FLAGS if name in values}
  source = source_bindings(project=values.get("project"), **sources)
  last_source = ([name for name in values if name in sources] or [None])[-1]
  bindings = []
  for name, value in values.items():
    if name in BY_FLAG and name in emit:
      bindings += BY_FLAG[name].bindings(value)
    if name == last_source and name in emit:
      bindings += source
  return bindings
