"""The entry points as plain Python: no gin config, explicit collaborators.

`train`, `evaluate` and `export` take the model, dataset, schedule and
optimizer builders, the EMA class and the strategy as arguments; this runs
all three with builders of our own and checks that those, and nothing from
gin, made the run.
"""
import functools
import os

import gin
import numpy as np
import tensorflow as tf

from effnet_gin import data
from effnet_gin import model as model_lib
from effnet_gin.checkpoints import averaging
from effnet_gin.train import optim
from effnet_gin import distribute

from effnet_gin.train import trainer
from effnet_gin.evaluation import evaluator as evaluate_lib
from effnet_gin.serving import exporter as export_lib

NUM_CLASSES = 5
SIZE = 32


class _Recorded:
  """Calls a real builder and records the keyword arguments it was given."""

  def __init__(self, builder):
    self._builder = builder
    self.calls = []
    self.results = []

  def __call__(self, *args, **kwargs):
    self.calls.append(kwargs)
    self.results.append(self._builder(*args, **kwargs))
    return self.results[-1]


def test_train_evaluate_and_export_with_explicit_collaborators(tmp_path):
  assert gin.config_str() == ""  # Nothing parsed: conftest clears gin.
  model_builder = _Recorded(
      functools.partial(model_lib.build_model, "efficientnet-b0",
                        num_classes=NUM_CLASSES, width_coefficient=0.1,
                        depth_coefficient=0.1, image_size=SIZE))
  source = data.RandomNoiseSource(num_train=16, num_eval=6,
                                  num_classes=NUM_CLASSES, image_size=40)
  dataset_builder = _Recorded(
      functools.partial(data.build_dataset, source=source,
                        num_classes=NUM_CLASSES))
  schedule_builder = _Recorded(
      functools.partial(optim.build_schedule, base_learning_rate=0.01,
                        warmup_epochs=0))
  optimizer_builder = _Recorded(
      functools.partial(optim.build_optimizer, name="momentum"))
  ema_builder = _Recorded(
      functools.partial(averaging.ExponentialMovingAverage, decay=0.5))
  strategy = distribute.build_strategy(kind="cpu")
  model_dir = str(tmp_path / "run")
  result = trainer.train(
      model_dir=model_dir, train_steps=2, train_batch_size=4, image_size=SIZE,
      num_train_images=16, steps_per_loop=1, mode="train_and_eval",
      eval_batch_size=4, steps_per_eval=2, model_builder=model_builder,
      dataset_builder=dataset_builder, schedule_builder=schedule_builder,
      optimizer_builder=optimizer_builder, ema_builder=ema_builder,
      strategy=strategy, command="python test")

  assert (result["start_step"], result["step"]) == (0, 2)
  assert np.isfinite(result["loss"])
  assert result["eval"]["num_examples"] == 6
  # Each collaborator was used, with what train owes it.
  assert model_builder.calls == [{}]
  assert [c["split"] for c in dataset_builder.calls] == ["train", "eval"]
  assert dataset_builder.calls[0]["global_batch_size"] == 4
  assert schedule_builder.calls == [
      dict(global_batch_size=4, num_train_images=16, train_steps=2)
  ]
  [optimizer] = optimizer_builder.results
  assert isinstance(optimizer, optim.TF1Momentum)
  assert int(optimizer.iterations.numpy()) == 2
  [ema] = ema_builder.results
  assert ema.decay == 0.5
  # No config was given, so none is written; the command is.
  assert sorted(n for n in os.listdir(model_dir) if "config" in n) == []
  with open(f"{model_dir}/command") as f:
    assert f.read() == "python test"

  # The evaluator restores the final checkpoint's EMA weights: the scores the
  # in-process evaluation of the same weights gave.
  [evaluated
  ] = evaluate_lib.evaluate(model_dir=model_dir, eval_batch_size=4,
                            image_size=SIZE, checkpoint=f"{model_dir}/ckpt-2",
                            model_builder=model_builder,
                            dataset_builder=dataset_builder, strategy=strategy)
  for name in ("top_1_accuracy", "top_5_accuracy", "loss", "num_examples"):
    np.testing.assert_allclose(evaluated[name], result["eval"][name], rtol=1e-5)

  # The export serves those weights, preprocessed as given.
  export_dir = str(tmp_path / "serving")
  export_lib.export(model_dir=model_dir, export_dir=export_dir,
                    model_builder=model_builder,
                    preprocessing=data.Preprocessing(eval_crop_padding=0))
  assert model_builder.calls[-1] == dict(num_classes=NUM_CLASSES)
  served = tf.saved_model.load(export_dir)
  images, _, _ = next(
      iter(
          data.build_dataset(split="eval", global_batch_size=4, image_size=SIZE,
                             source=source, num_classes=NUM_CLASSES)))
  restored = export_lib.restore_for_serving(f"{model_dir}/ckpt-2",
                                            model_builder=model_builder)
  np.testing.assert_allclose(
      served.signatures["serving_images"](images=images)["probabilities"],
      tf.nn.softmax(restored(images, training=False)), atol=1e-4)
  # Its image-bytes signature crops with the Preprocessing it was given.
  jpeg = tf.io.encode_jpeg(
      tf.cast(
          tf.random.stateless_uniform([48, 40, 3], [1, 2], maxval=255,
                                      dtype=tf.int32), tf.uint8))
  by_signature = served.preprocess_image_bytes(tf.stack([jpeg]))[0].numpy()
  whole = data.preprocess_for_eval(jpeg, SIZE,
                                   data.Preprocessing(eval_crop_padding=0))
  np.testing.assert_allclose(by_signature, whole, atol=1e-4)
  assert np.abs(by_signature - data.preprocess_for_eval(jpeg, SIZE)).max() > 1
  assert gin.config_str() == ""
