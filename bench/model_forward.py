"""Benchmark: forward + backward + SGD update throughput of an EfficientNet.

    python3 bench/model_forward.py                      # B0, 224 px, batch 32
    python3 bench/model_forward.py --policy=mixed_bfloat16 --jit

Prints images/second of a plain `tf.function` training step (no `fit`), the
figure to compare with Keras `fit` on keras.applications.EfficientNetB0
(about 12.5 img/s on the 2-core CPU machines, see DESIGN.md). On a shared,
busy machine absolute figures drift, so `--baseline` also times
keras.applications.EfficientNetB0 (Keras' own BatchNormalization) in the same
step, alternating with ours. Never asserts.
"""
import time

from absl import app
from absl import flags
import keras
import tensorflow as tf

from effnet_gin import model as model_lib

_VARIANT = flags.DEFINE_string("variant", "efficientnet-b0", "Variant.")
_RESOLUTION = flags.DEFINE_integer("resolution", None, "Input size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up).")
_POLICY = flags.DEFINE_string("policy", "float32", "Keras dtype policy.")
_JIT = flags.DEFINE_bool("jit", False, "Compile the step with XLA.")
_BASELINE = flags.DEFINE_bool("baseline", False,
                              "Also time keras.applications.EfficientNetB0.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Timing rounds per model.")


def images_per_second(net, batch_size, steps, jit):
  """Times forward + backward + SGD update steps of `net` on random data."""
  size = net.input.shape[1]
  optimizer = keras.optimizers.SGD(0.01)
  optimizer.build(net.trainable_variables)
  images = tf.random.uniform([batch_size, size, size, 3], 0, 255)
  labels = tf.random.uniform([batch_size], 0, net.output.shape[-1], tf.int32)

  @tf.function(jit_compile=jit)
  def step(images, labels):
    with tf.GradientTape() as tape:
      logits = tf.cast(net(images, training=True), tf.float32)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, net.trainable_variables)
    optimizer.apply(grads, net.trainable_variables)
    return loss

  for _ in range(2):
    step(images, labels).numpy()
  start = time.perf_counter()
  for _ in range(steps):
    step(images, labels).numpy()
  return steps * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  keras.mixed_precision.set_global_policy(_POLICY.value)
  models = {
      "effnet_gin":
          model_lib.build_model(_VARIANT.value, image_size=_RESOLUTION.value)
  }
  size = models["effnet_gin"].input.shape[1]
  if _BASELINE.value:
    models["keras.applications.EfficientNetB0"] = (
        keras.applications.EfficientNetB0(weights=None,
                                          input_shape=(size, size, 3)))
  print(f"{_VARIANT.value} at {size}px, batch {_BATCH_SIZE.value}, "
        f"policy {_POLICY.value}, jit {_JIT.value}, "
        f"forward + backward + SGD update:")
  for round_index in range(_ROUNDS.value):
    for name, net in models.items():
      rate = images_per_second(net, _BATCH_SIZE.value, _STEPS.value, _JIT.value)
      print(f"  round {round_index}: {name:<34} {rate:6.1f} img/s", flush=True)


if __name__ == "__main__":
  app.run(main)
