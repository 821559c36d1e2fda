"""Shared test setup.

TensorFlow is configured here, before any test touches it: two logical CPU
devices so that MirroredStrategy tests run real multi-replica code on this
CPU-only machine. Every test starts with an empty gin config and ends with
the float32 precision policy.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_CPUS = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _CPUS[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True)
def _clear_gin_config():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(autouse=True)
def _float32_policy():
  """Restores the float32 Keras policy a test (or the trainer) changed."""
  yield
  keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def mirrored_strategy():
  """One MirroredStrategy over the two logical CPUs, shared by all tests.

  Every MirroredStrategy in a process numbers its collective ops from the same
  keys, so two of them over the same devices collide ("Collective instance
  100 expected type 2 ... got type 0"); a single shared one never does. The
  trainer builds one strategy per process, so only tests need this.
  """
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
