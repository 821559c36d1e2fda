"""One pass over the validation set: `EvalRunner` and `run_evaluation`.

The trainer's train_and_eval mode keeps one runner; the evaluator
(`effnet_gin.evaluation.evaluator`) keeps one across checkpoints.
"""
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.evaluation import metrics
from effnet_gin import distribute


class EvalRunner:
  """Scores a model on the eval split; reusable across checkpoints.

  The compiled eval function is traced once per runner, so a caller that
  evaluates repeatedly (the continuous evaluator) keeps one runner and pays
  for tracing once. Each `run()` builds a fresh distributed eval dataset, which
  is finite and holds every validation example exactly once (padding carries
  weight 0), so every run sees the whole validation set.

  Args:
    strategy: the `tf.distribute.Strategy` whose scope created `model`.
    model: a Keras model mapping float32 RGB 0-255 images to logits.
    eval_batch_size: global eval batch size, split evenly over the replicas.
    image_size: eval resolution in pixels.
    jit_compile: compile the per-replica step with XLA (shapes are static).
    dataset_builder: `dataset_builder(input_context, split='eval',
      global_batch_size=, image_size=)` gives one pipeline's eval batches
      (`effnet_gin.data.build_dataset` with its source bound).

  Raises:
    ValueError: when the batch size is not positive or not divisible by the
      number of replicas.
  """

  def __init__(self, *, strategy, model, eval_batch_size, image_size,
               jit_compile=False, dataset_builder=build_dataset):
    replicas = strategy.num_replicas_in_sync
    if not eval_batch_size or eval_batch_size <= 0:
      raise ValueError(f"eval_batch_size must be positive, got "
                       f"{eval_batch_size!r}")
    if eval_batch_size % replicas:
      raise ValueError(f"eval_batch_size={eval_batch_size} is not divisible "
                       f"by the {replicas} replicas")
    self._strategy = strategy
    self._eval_batch_size = eval_batch_size
    self._image_size = image_size
    self._dataset_builder = dataset_builder

    def replica_step(images, labels, weights):
      logits = tf.cast(model(images, training=False), tf.float32)
      cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=labels, logits=logits)
      return tf.stack([
          tf.reduce_sum(weights),
          metrics.top_k_correct(labels, logits, 1, weights),
          metrics.top_k_correct(labels, logits, 5, weights),
          tf.reduce_sum(cross_entropy * weights),
      ])

    step = tf.function(replica_step, jit_compile=jit_compile)

    @tf.function
    def eval_pass(dataset):
      # Per-batch sums are exact in float32; accumulating 50,000 examples is
      # done in float64 so the loss total does not lose digits.
      totals = tf.zeros([4], tf.float64)
      for images, labels, weights in dataset:
        sums = strategy.run(step, args=(images, labels, weights))
        totals += tf.cast(
            strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None),
            tf.float64)
      return totals

    self._eval_pass = eval_pass

  def run(self):
    """Evaluates the model's current weights.

    Returns:
      Python numbers: `top_1_accuracy`, `top_5_accuracy`, `loss` (unsmoothed
      cross-entropy averaged over the real examples) and `num_examples`.

    Raises:
      ValueError: when the eval split yielded no examples.
    """
    count, top_1, top_5, loss_sum = (float(v) for v in self._eval_pass(
        distribute.distributed_dataset(self._strategy, self._dataset_builder,
                                       split="eval",
                                       global_batch_size=self._eval_batch_size,
                                       image_size=self._image_size)).numpy())
    if count <= 0:
      raise ValueError("the eval split yielded no examples; check the data "
                       "source's eval files and NUM_EVAL_IMAGES")
    return dict(top_1_accuracy=top_1 / count, top_5_accuracy=top_5 / count,
                loss=loss_sum / count, num_examples=int(round(count)))


def run_evaluation(*, strategy, model, eval_batch_size, image_size,
                   jit_compile=False, dataset_builder=build_dataset):
  """Evaluates `model` once over the whole validation set.

  Args:
    strategy: the `tf.distribute.Strategy` whose scope created `model`.
    model: a Keras model mapping float32 RGB 0-255 images to logits; its
      current weights are evaluated (swap EMA weights in around the call).
    eval_batch_size: global eval batch size.
    image_size: eval resolution in pixels.
    jit_compile: compile the per-replica step with XLA.
    dataset_builder: gives the eval batches, as for `EvalRunner`.

  Returns:
    A dict of Python numbers: `top_1_accuracy`, `top_5_accuracy`, `loss`
    and `num_examples`.

  Raises:
    ValueError: for a bad batch size or an empty eval split.
  """
  return EvalRunner(strategy=strategy, model=model,
                    eval_batch_size=eval_batch_size, image_size=image_size,
                    jit_compile=jit_compile,
                    dataset_builder=dataset_builder).run()
