"""The one place that knows gin: registers the builders, wires the top.

Library code is plain Python: builders take keyword arguments, and the entry
points `train`, `evaluate` and `export` receive their collaborators (model,
dataset, schedule and optimizer builders, the EMA class, the strategy, the
`Preprocessing`) as arguments with the library's builders as defaults. This
module registers each with `gin.external_configurable` under the names the
shipped `.gin` files use — `build_model`, `effnet_gin.train.train.train_steps`,
… — and its `train`, `evaluate`, `export` and `export_lite` functions call
the entry points with gin's bindings and the gin-bound collaborators. The
bin/ scripts call those; a Python user without gin calls the library.

Registered names (each also reachable with its module prefix, e.g.
`effnet_gin.model.build_model`):
  model:  build_model, variant_resolution, variant_train_resolution,
          variant_resize_method, distributed_batch_norm
  data:   build_dataset, Preprocessing (crop and resize, one instance for
          the input pipeline and the exporter alike), randaugment_magnitude_for
          and the sources TFRecordSource, RandomNoiseSource,
          LearnableShapesSource, TFDSSource, ImageFolderSource, ImageGlobSource,
          BigtableSource
          (FakeSource and SyntheticSource: their deprecated old names),
          images_after_holdout (image counts with held-out shards)
  train:  build_strategy, build_schedule, build_optimizer,
          ExponentialMovingAverage, steps_for_epochs, ProgressiveLearning,
          train, evaluate, export, export_lite

Each registered object is reachable here by its name (`configurables.
build_model()` builds the configured model); calling the library's own
(`effnet_gin.model.build_model()`) ignores gin.
"""
import functools

import gin

from effnet_gin import data as data_lib
from effnet_gin import model as model_lib
from effnet_gin.model import cross_replica
from effnet_gin.checkpoints import averaging
from effnet_gin.serving import converters
from effnet_gin.train import trainer
from effnet_gin.train import optim
from effnet_gin.train import durations
from effnet_gin.train import stages
from effnet_gin import distribute

from effnet_gin.evaluation import evaluator
from effnet_gin.serving import exporter


def _model(fn_or_cls, name=None, **kwargs):
  return gin.external_configurable(fn_or_cls, name, module="effnet_gin.model",
                                   **kwargs)


def _data(fn_or_cls, name=None, **kwargs):
  return gin.external_configurable(fn_or_cls, name, module="effnet_gin.data",
                                   **kwargs)


def _train(fn_or_cls, name=None, **kwargs):
  return gin.external_configurable(fn_or_cls, name, module="effnet_gin.train",
                                   **kwargs)


# --- model -----------------------------------------------------------------
build_model = _model(model_lib.build_model, "build_model")
variant_resolution = _model(model_lib.variant_resolution, "variant_resolution")
variant_train_resolution = _model(model_lib.variant_train_resolution,
                                  "variant_train_resolution")
# The reference's LARS-path batch norm, as a batch_norm_group_size value.
distributed_batch_norm = _model(cross_replica.distributed,
                                "distributed_batch_norm")
variant_resize_method = _model(model_lib.variant_resize_method,
                               "variant_resize_method")

# --- data ------------------------------------------------------------------
Preprocessing = _data(data_lib.Preprocessing, "Preprocessing")
# `preprocessing` is not bound on build_dataset: bind Preprocessing, which the
# exporter reads too, so serving preprocesses as eval does.
build_dataset = _data(data_lib.build_dataset, "build_dataset",
                      denylist=["preprocessing"])
randaugment_magnitude_for = _data(data_lib.randaugment_magnitude_for,
                                  "randaugment_magnitude_for")
TFRecordSource = _data(data_lib.TFRecordSource, "TFRecordSource")
RandomNoiseSource = _data(data_lib.RandomNoiseSource, "RandomNoiseSource")
LearnableShapesSource = _data(data_lib.LearnableShapesSource,
                              "LearnableShapesSource")
# Deprecated names of the two above; they warn, and go in effnet_gin 0.3.0.
FakeSource = _data(data_lib.FakeSource, "FakeSource")
SyntheticSource = _data(data_lib.SyntheticSource, "SyntheticSource")
TFDSSource = _data(data_lib.TFDSSource, "TFDSSource")
ImageFolderSource = _data(data_lib.ImageFolderSource, "ImageFolderSource")
ImageGlobSource = _data(data_lib.ImageGlobSource, "ImageGlobSource")
BigtableSource = _data(data_lib.BigtableSource, "BigtableSource")
images_after_holdout = _data(data_lib.images_after_holdout,
                             "images_after_holdout")

# --- train -----------------------------------------------------------------
build_strategy = _train(distribute.build_strategy, "build_strategy")
build_schedule = _train(optim.build_schedule, "build_schedule")
build_optimizer = _train(optim.build_optimizer, "build_optimizer")
ExponentialMovingAverage = _train(averaging.ExponentialMovingAverage,
                                  "ExponentialMovingAverage")
steps_for_epochs = _train(durations.steps_for_epochs, "steps_for_epochs")
# `train.progressive = @effnet_gin.train.ProgressiveLearning()` turns it on.
ProgressiveLearning = _train(stages.ProgressiveLearning, "ProgressiveLearning")

# The entry points' collaborators come from here, not from bindings.
_TRAIN_COLLABORATORS = [
    "model_builder", "dataset_builder", "schedule_builder", "optimizer_builder",
    "ema_builder", "strategy"
]
_configured_train = _train(
    trainer.train, "train", denylist=[
        "model_dir", "command", "config_text", "operative_config_text",
        *_TRAIN_COLLABORATORS
    ])
_configured_evaluate = _train(
    evaluator.evaluate, "evaluate", denylist=[
        "model_dir", "train_steps_from_run", "model_builder", "dataset_builder",
        "strategy", "image_glob"
    ])
_configured_export_lite = _train(
    converters.export_lite, "export_lite", allowlist=[
        "calibration_images", "compare_on_eval", "max_int8_drop", "num_threads",
        "opset"
    ])
_configured_export = _train(
    exporter.export, "export", denylist=[
        "model_dir", "export_dir", "model_builder", "preprocessing",
        "lite_exporter"
    ])


def dataset_builder():
  """`build_dataset` with gin's bindings and the gin-bound Preprocessing."""
  return functools.partial(build_dataset, preprocessing=Preprocessing())


def train(**kwargs):
  """Runs `trainer.train` with gin's bindings and gin-bound collaborators.

  Records the command, gin's config and, after the first loop, the operative
  config in model_dir. Keyword arguments override both (e.g. `model_dir`,
  `command`, or a collaborator such as `strategy`).
  """
  wiring = dict(model_builder=build_model, dataset_builder=dataset_builder(),
                schedule_builder=build_schedule,
                optimizer_builder=build_optimizer,
                ema_builder=ExponentialMovingAverage,
                config_text=gin.config_str(),
                operative_config_text=gin.operative_config_str)
  wiring.update(kwargs)
  if "strategy" not in wiring:
    wiring["strategy"] = build_strategy()
  return _configured_train(**wiring)


def evaluate(**kwargs):
  """Runs `evaluator.evaluate` with gin's bindings and collaborators."""
  wiring = dict(model_builder=build_model, dataset_builder=dataset_builder())
  wiring.update(kwargs)
  if "strategy" not in wiring:
    wiring["strategy"] = build_strategy()
  return _configured_evaluate(**wiring)


def export_lite(model, **kwargs):
  """`converters.export_lite` with gin's bindings and dataset builder."""
  kwargs.setdefault("dataset_builder", dataset_builder())
  return _configured_export_lite(model, **kwargs)


def export(**kwargs):
  """Runs `exporter.export` with gin's bindings and collaborators."""
  wiring = dict(model_builder=build_model, preprocessing=Preprocessing(),
                lite_exporter=export_lite)
  wiring.update(kwargs)
  return _configured_export(**wiring)
