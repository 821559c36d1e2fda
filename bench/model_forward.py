"""Benchmark: forward + backward + SGD update throughput of an EfficientNet.

    python3 bench/model_forward.py                      # B0, 224 px, batch 32
    python3 bench/model_forward.py --policy=mixed_bfloat16 --jit

Prints images/second of a plain `tf.function` training step (no `fit`), the
figure to compare with Keras `fit` on keras.applications.EfficientNetB0
(about 12.5 img/s on the 2-core CPU machines, see DESIGN.md). Never asserts.
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


def main(argv):
  del argv
  keras.mixed_precision.set_global_policy(_POLICY.value)
  net = model_lib.build_model(_VARIANT.value, resolution=_RESOLUTION.value)
  size = net.input.shape[1]
  optimizer = keras.optimizers.SGD(0.01)
  optimizer.build(net.trainable_variables)
  images = tf.random.uniform([_BATCH_SIZE.value, size, size, 3], 0, 255)
  labels = tf.random.uniform([_BATCH_SIZE.value], 0, 1000, tf.int32)

  @tf.function(jit_compile=_JIT.value)
  def step(images, labels):
    with tf.GradientTape() as tape:
      logits = net(images, training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels, logits))
    grads = tape.gradient(loss, net.trainable_variables)
    optimizer.apply(grads, net.trainable_variables)
    return loss

  for _ in range(2):
    step(images, labels).numpy()
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    step(images, labels).numpy()
  seconds = time.perf_counter() - start
  print(f"{_VARIANT.value} {size}px batch {_BATCH_SIZE.value} "
        f"policy={_POLICY.value} jit={_JIT.value}: "
        f"{_STEPS.value * _BATCH_SIZE.value / seconds:.1f} img/s "
        f"({seconds / _STEPS.value * 1000:.0f} ms/step)")


if __name__ == "__main__":
  app.run(main)
