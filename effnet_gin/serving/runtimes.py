"""Running exported models with their own runtimes, and scoring them.

`load_classifier` opens a `.tflite` file with LiteRT (`ai-edge-litert`, the
XNNPACK CPU delegate, a chosen thread count) or a `.onnx` file with
onnxruntime. Every classifier maps float32 RGB 0-255 images [N, S, S, 3]
(the eval preprocessing's output) to float32 logits [N, num_classes]: an
int8 model's uint8 input is quantized with the model's own input scale and
zero point (scale 1 and zero point 0 for effnet_gin's exports: rounded,
clipped pixels) and its output dequantized.

`evaluate_classifier` scores one on the eval split of the configured input
pipeline (`build_dataset`, every image exactly once); `predict` classifies
image files with one.
"""

import numpy as np
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.serving import formats


def _read_bytes(path):
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"exported model {path!r} does not exist")
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def _quantize(images, dtype, scale, zero_point):
  info = np.iinfo(dtype)
  return np.clip(np.round(images / scale + zero_point), info.min,
                 info.max).astype(dtype)


class _Classifier:
  """Shared batching: the runtime sees only its fixed batch size."""

  batch_size = 1
  image_size = None
  num_classes = None

  def _run(self, batch):
    raise NotImplementedError

  def logits(self, images):
    """float32 logits [N, num_classes] of float32 0-255 images [N, S, S, 3]."""
    images = np.asarray(images, np.float32)
    outputs = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      padded = np.concatenate([
          chunk,
          np.zeros((self.batch_size - len(chunk),) + chunk.shape[1:],
                   np.float32)
      ])
      outputs.append(self._run(padded)[:len(chunk)])
    return np.concatenate(outputs).astype(np.float32)


class TFLiteClassifier(_Classifier):
  """A .tflite classifier run by LiteRT with the XNNPACK delegate.

  Args:
    path: the .tflite file (local or gs://).
    num_threads: CPU threads for the interpreter; None lets LiteRT choose.
  """

  def __init__(self, path, num_threads=None):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    # The BUILTIN resolver applies the XNNPACK delegate by default.
    self._interpreter = litert.Interpreter(
        model_content=_read_bytes(path), num_threads=num_threads,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN)
    self._interpreter.allocate_tensors()
    self._input = self._interpreter.get_input_details()[0]
    self._output = self._interpreter.get_output_details()[0]
    self.batch_size, self.image_size = (
        int(d) for d in self._input["shape"][:2])
    self.num_classes = int(self._output["shape"][-1])
    self.input_dtype = np.dtype(self._input["dtype"])

  def _run(self, batch):
    scale, zero_point = self._input["quantization"]
    if np.issubdtype(self.input_dtype, np.integer):
      batch = _quantize(batch, self.input_dtype, scale, zero_point)
    self._interpreter.set_tensor(self._input["index"], batch)
    self._interpreter.invoke()
    output = self._interpreter.get_tensor(self._output["index"])
    scale, zero_point = self._output["quantization"]
    if np.issubdtype(output.dtype, np.integer):
      output = (output.astype(np.float32) - zero_point) * scale
    return output


class ONNXClassifier(_Classifier):
  """A .onnx classifier run by onnxruntime on the CPU.

  Args:
    path: the .onnx file (local or gs://).
    num_threads: intra-op threads; None lets onnxruntime choose.
  """

  def __init__(self, path, num_threads=None):
    import onnxruntime  # pylint: disable=g-import-not-at-top
    options = onnxruntime.SessionOptions()
    if num_threads:
      options.intra_op_num_threads = num_threads
    self._session = onnxruntime.InferenceSession(
        _read_bytes(path), options, providers=["CPUExecutionProvider"])
    self._input = self._session.get_inputs()[0]
    self.batch_size, self.image_size = (int(d) for d in self._input.shape[:2])
    self.num_classes = int(self._session.get_outputs()[0].shape[-1])

  def _run(self, batch):
    return self._session.run(None, {self._input.name: batch})[0]


class KerasClassifier(_Classifier):
  """A Keras model (e.g. the float network an int8 model came from)."""

  def __init__(self, model, batch_size=32, image_size=None):
    self._model = model
    self.batch_size = batch_size
    self.image_size = image_size or int(model.input_shape[1])
    self.num_classes = int(model.output_shape[-1])

  def _run(self, batch):
    return np.asarray(self._model(batch, training=False))


def load_classifier(path, *, num_threads=None):
  """Opens an exported .tflite or .onnx model (or a directory holding one).

  Raises:
    FileNotFoundError: when there is no such model.
    ValueError: for a file that is neither .tflite nor .onnx.
  """
  if tf.io.gfile.isdir(path):
    for name in (formats.TFLITE_FILE, formats.ONNX_FILE):
      if tf.io.gfile.exists(f"{path}/{name}"):
        path = f"{path}/{name}"
        break
    else:
      raise FileNotFoundError(f"{path!r} holds no {formats.TFLITE_FILE} or "
                              f"{formats.ONNX_FILE}")
  if path.endswith(".tflite"):
    return TFLiteClassifier(path, num_threads=num_threads)
  if path.endswith(".onnx"):
    return ONNXClassifier(path, num_threads=num_threads)
  raise ValueError(f"{path!r} is not a .tflite or .onnx model")


def evaluate_classifier(classifier, *, num_examples=None,
                        dataset_builder=build_dataset):
  """Top-1 and top-5 of `classifier` over the configured eval split.

  The eval pipeline is `dataset_builder(split='eval')` at the classifier's
  resolution (`build_dataset` with the run's source bound); it holds every
  validation image exactly once, and its padding (weight 0) is not counted.

  Args:
    classifier: one of this module's classifiers.
    num_examples: evaluate only the first this many images; None takes the
      pipeline's setting (all of them, or NUM_EVAL_IMAGES).
    dataset_builder: gives the eval batches.

  Returns:
    {"top_1_accuracy", "top_5_accuracy", "num_examples"} as Python numbers.

  Raises:
    ValueError: when the eval split yields no image.
  """
  overrides = {} if num_examples is None else {
      "num_eval_examples": num_examples
  }
  dataset = dataset_builder(split="eval", global_batch_size=32,
                            image_size=classifier.image_size, **overrides)
  count = top_1 = top_5 = 0
  for images, labels, weights in dataset.as_numpy_iterator():
    real = weights > 0
    if not real.any():
      continue
    logits = classifier.logits(images[real])
    labels = labels[real]
    ranked = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
    top_1 += int(np.sum(ranked[:, 0] == labels))
    top_5 += int(np.sum(np.any(ranked == labels[:, None], axis=-1)))
    count += len(labels)
  if not count:
    raise ValueError("the eval split yielded no images; check the data "
                     "source's eval files and NUM_EVAL_IMAGES")
  return dict(top_1_accuracy=top_1 / count, top_5_accuracy=top_5 / count,
              num_examples=count)
