"""What the evaluator records, and where (`Recorder`):

  model_dir/eval/results.jsonl      one JSON line per checkpoint of the run.
  model_dir/eval/other_checkpoints.jsonl
                                    results of checkpoints that are not the
                                    run's own (in best/ or another directory):
                                    kept apart so they never count as the run's.
  model_dir/eval/record_counts.json the validation files' record counts.
  model_dir/best/                   a copy of the best checkpoint so far by
                                    top-1 (the reference's `archive_ckpt`), its
                                    `checkpoint` state file and
                                    best_result.json.
"""
import json

from absl import logging
import tensorflow as tf

from effnet_gin.data.sources import tfrecord
from effnet_gin.train import checkpointing
from effnet_gin.train.eval_runner import METRICS

EVAL_SUBDIR = "eval"
BEST_SUBDIR = "best"
RESULTS_FILE = "results.jsonl"
OTHER_RESULTS_FILE = "other_checkpoints.jsonl"
BEST_RESULT_FILE = "best_result.json"
RECORD_COUNTS_FILE = "record_counts.json"


def _directory(path):
  return path.rstrip("/").rsplit("/", 1)[0]


def is_own_checkpoint(model_dir, path):
  """Whether checkpoint prefix `path` lives directly in model_dir."""
  return _directory(path) == model_dir.rstrip("/")


class ResultsLog:
  """model_dir/eval/results.jsonl: one JSON object per evaluated checkpoint.

  The whole file is rewritten through a temporary file and a rename on each
  record, because gs:// does not support appending.

  Args:
    model_dir: the run's directory.
    filename: the file in model_dir/eval/ (OTHER_RESULTS_FILE holds the
      results of checkpoints that are not the run's own).
  """

  def __init__(self, model_dir, filename=RESULTS_FILE):
    self.path = f"{model_dir.rstrip('/')}/{EVAL_SUBDIR}/{filename}"
    self._key = "step" if filename == RESULTS_FILE else "checkpoint"

  def read(self):
    """Returns the recorded results, oldest first.

    Raises:
      ValueError: naming the file and line when a line is not JSON.
    """
    if not tf.io.gfile.exists(self.path):
      return []
    with tf.io.gfile.GFile(self.path) as f:
      lines = f.read().splitlines()
    results = []
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        results.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{self.path}, line {number}: not a JSON object "
                         f"({e}): {line[:200]!r}") from e
    return results

  def evaluated_steps(self):
    return {result["step"] for result in self.read()}

  def record(self, result):
    """Adds `result`, replacing an earlier one of the same step (run's own
    results) or of the same checkpoint path (other checkpoints')."""
    kept = [r for r in self.read() if r[self._key] != result[self._key]]
    text = "".join(json.dumps(r) + "\n" for r in kept + [result])
    directory, filename = self.path.rsplit("/", 1)
    checkpointing.write_text(directory, filename, text)


class BestCheckpoint:
  """model_dir/best/: a copy of the checkpoint with the highest top-1 so far.

  Args:
    model_dir: the run's directory.
    metric: the result key to maximise.
  """

  def __init__(self, model_dir, metric="top_1_accuracy"):
    self._model_dir = model_dir.rstrip("/")
    self.directory = f"{self._model_dir}/{BEST_SUBDIR}"
    self._metric = metric

  def read(self):
    """The best result so far (with its archived `checkpoint`), or None."""
    path = f"{self.directory}/{BEST_RESULT_FILE}"
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.loads(f.read())

  def _copy(self, source):
    """Copies the files of checkpoint `source`; False if they vanished."""
    try:
      filenames = tf.io.gfile.glob(source + ".*")
      for filename in filenames:
        # Through a temporary name, so a crash mid-copy damages no file.
        target = f"{self.directory}/{filename.rsplit('/', 1)[-1]}"
        tf.io.gfile.copy(filename, target + ".tmp", overwrite=True)
        tf.io.gfile.rename(target + ".tmp", target, overwrite=True)
    except tf.errors.NotFoundError:
      return False
    return any(f.endswith(".index") for f in filenames)

  def offer(self, result, checkpoint):
    """Archives the evaluated checkpoint when it beats the best so far.

    Args:
      result: the evaluation result; `result['checkpoint']` is copied.
      checkpoint: the restored `tf.train.Checkpoint`, written instead when
        the trainer's retention deleted the files before they were copied.

    Returns:
      Whether the checkpoint became the new best.

    Raises:
      ValueError: for a checkpoint outside model_dir (or in best/).
    """
    best = self.read()
    if best is not None and result[self._metric] <= best[self._metric]:
      return False
    source = result["checkpoint"]
    # One in best/ itself would be copied onto itself (truncating it).
    if not is_own_checkpoint(self._model_dir, source):
      raise ValueError(f"{source!r} is not one of the checkpoints the run "
                       f"wrote in {self._model_dir!r}; it cannot become the "
                       "run's best")
    prefix = f"{self.directory}/{source.rsplit('/', 1)[-1]}"
    tf.io.gfile.makedirs(self.directory)
    if not self._copy(source):
      logging.warning("%s was deleted before it could be copied to %s; "
                      "writing the restored weights instead", source,
                      self.directory)
      checkpoint.write(prefix)
    checkpointing.write_checkpoint_state(self.directory,
                                         [prefix.rsplit("/", 1)[-1]])
    checkpointing.write_text(
        self.directory, BEST_RESULT_FILE,
        json.dumps(dict(result, source_checkpoint=source,
                        checkpoint=prefix), indent=2) + "\n")
    if best is not None and best["checkpoint"] != prefix:
      for filename in tf.io.gfile.glob(best["checkpoint"] + ".*"):
        tf.io.gfile.remove(filename)
    logging.info("New best %s %.5f at step %d: archived in %s", self._metric,
                 result[self._metric], result["step"], self.directory)
    return True


class RecordCountCache:
  """model_dir/eval/record_counts.json: the eval files' record counts.

  Exactly-once eval needs every validation file's record count, and counting
  reads the files whole (6.4 GB from gs:// for ImageNet). The counts are
  kept as [path, size in bytes, count] entries, so a restarted evaluator
  reuses them, and a file whose name or size changed is counted afresh.
  """

  def __init__(self, model_dir):
    self.path = f"{model_dir}/{EVAL_SUBDIR}/{RECORD_COUNTS_FILE}"
    self._saved = []

  def load(self):
    """Makes the saved counts known to the TFRecord source."""
    if tf.io.gfile.exists(self.path):
      with tf.io.gfile.GFile(self.path) as f:
        tfrecord.remember_record_counts(json.loads(f.read()))
      self._saved = tfrecord.known_record_counts()
      logging.info("Reusing the record counts of %d eval files from %s",
                   len(self._saved), self.path)

  def save_if_changed(self):
    counts = tfrecord.known_record_counts()
    if counts != self._saved:
      directory, filename = self.path.rsplit("/", 1)
      checkpointing.write_text(directory, filename, json.dumps(counts))
      self._saved = counts


class Recorder:
  """Writes a result where it belongs; the chief's only (others: no-op).

  The run's own checkpoints get TensorBoard scalars, the best archive and
  results.jsonl, in that order: a result counts as done only once it was
  offered to best/, so a crash in between re-evaluates it on restart rather
  than leaving a better step out of best/. Checkpoints from best/ or another
  directory go to other_checkpoints.jsonl only.
  """

  def __init__(self, model_dir, chief):
    self._model_dir = model_dir
    self._chief = chief
    self.results_log = ResultsLog(model_dir)
    self._other_log = ResultsLog(model_dir, OTHER_RESULTS_FILE)
    self._best = BestCheckpoint(model_dir)
    self._writer = None  # Created with the first scalars it writes.
    self._counts = RecordCountCache(model_dir)
    self._counts.load()

  def __call__(self, result, checkpoint):
    if not self._chief:
      return
    self._counts.save_if_changed()
    if not is_own_checkpoint(self._model_dir, result["checkpoint"]):
      self._other_log.record(result)
      logging.info("%s is not one of the checkpoints the run wrote in %s: "
                   "its result went to %s only (not results.jsonl, best/ or "
                   "the TensorBoard scalars)", result["checkpoint"],
                   self._model_dir, self._other_log.path)
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(
          f"{self._model_dir}/{EVAL_SUBDIR}")
    with self._writer.as_default():
      for name in METRICS:
        tf.summary.scalar(name, result[name], step=result["step"])
    self._writer.flush()
    self._best.offer(result, checkpoint)
    self.results_log.record(result)

  def close(self):
    if self._writer is not None:
      self._writer.close()
