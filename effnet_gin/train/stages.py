"""Progressive learning (EfficientNetV2): the stage table of one run.

Plain Python, no TensorFlow. `ProgressiveLearning` describes the schedule;
`plan` turns it into the `Stage`s of a run of `train_steps` steps at
`image_size`, with automl's rules (google/automl efficientnetv2 main.py):

  stage i of N ends at step  int((i + 1) / N * train_steps)
  its image size is          int(ibase + (image_size - ibase) * (i + 1) / N)
  each regulariser is        np.linspace(min, max, N)[i]
                             = min + (max - min) * i / (N - 1)

so the image size never starts at ibase but the regularisers start at their
minimum, and the last stage trains at the full size with the maximum. The
integer rules are computed exactly (floor of a rational), not in floats.
"""
import dataclasses
from typing import Optional, Tuple

_REGULARISERS = ("dropout", "randaugment_magnitude", "mixup_alpha",
                 "cutmix_alpha")


@dataclasses.dataclass(frozen=True)
class ProgressiveLearning:
  """EfficientNetV2's progressive learning: image size and regularisation grow.

  Attributes:
    num_stages: stages of the run (automl: 4).
    min_image_size: automl's `ibase`, the size the interpolation starts from
      (the first stage trains above it); at most the training image size.
    dropout: (min, max) of the classifier's dropout rate, or None to leave
      the model's own.
    randaugment_magnitude: (min, max) RandAugment magnitude (automl: min 5),
      or None to leave build_dataset's; it acts only with augment =
      'randaugment'.
    mixup_alpha: (min, max) mixup alpha (automl: min 0), or None.
    cutmix_alpha: (min, max) CutMix alpha (automl: min 0), or None; the
      pipeline takes one of mixup and CutMix, not both in one batch.
  """
  num_stages: int = 4
  min_image_size: int = 128
  dropout: Optional[Tuple[float, float]] = None
  randaugment_magnitude: Optional[Tuple[float, float]] = None
  mixup_alpha: Optional[Tuple[float, float]] = None
  cutmix_alpha: Optional[Tuple[float, float]] = None

  def __post_init__(self):
    for name in ("num_stages", "min_image_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ProgressiveLearning.{name} must be an int >= 1, "
                         f"got {value!r}")
    for name in _REGULARISERS:
      _check_range(name, getattr(self, name))
    if max(self.mixup_alpha or [0]) > 0 and max(self.cutmix_alpha or [0]) > 0:
      raise ValueError("ProgressiveLearning.mixup_alpha and cutmix_alpha are "
                       "both set: the input pipeline takes one of mixup and "
                       "CutMix")
    if self.dropout is not None and max(self.dropout) >= 1:
      raise ValueError(f"ProgressiveLearning.dropout must stay below 1, got "
                       f"{self.dropout!r}")


def _check_range(name, value):
  if value is None:
    return
  if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
      for v in value)):
    raise ValueError(f"ProgressiveLearning.{name} must be a (min, max) pair "
                     f"of numbers >= 0 or None, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a run: steps [start_step, end_step) at one size.

  A regulariser that is None is left as configured.
  """
  index: int
  num_stages: int
  start_step: int
  end_step: int
  image_size: int
  dropout: Optional[float] = None
  randaugment_magnitude: Optional[float] = None
  mixup_alpha: Optional[float] = None
  cutmix_alpha: Optional[float] = None

  def dataset_kwargs(self):
    """The stage's build_dataset arguments beyond the size (the set ones)."""
    names = ("randaugment_magnitude", "mixup_alpha", "cutmix_alpha")
    return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

  def describe(self):
    """E.g. 'stage 2/4: image 192, dropout 0.15, randaugment 6.67, mixup 0,
    cutmix as configured, steps 100-200'."""

    def fmt(value):
      return "as configured" if value is None else f"{value:.4g}"

    return (f"stage {self.index + 1}/{self.num_stages}: image "
            f"{self.image_size}, dropout {fmt(self.dropout)}, randaugment "
            f"{fmt(self.randaugment_magnitude)}, mixup "
            f"{fmt(self.mixup_alpha)}, cutmix {fmt(self.cutmix_alpha)}, "
            f"steps {self.start_step}-{self.end_step}")


def plan(progressive, *, train_steps, image_size):
  """The stages of a run (one stage of the whole run when not progressive).

  Args:
    progressive: a `ProgressiveLearning`, or None.
    train_steps: the run's total steps.
    image_size: the training image size (the last stage's).

  Returns:
    A list of `Stage`, in order, covering steps 0..train_steps; a stage may
    be empty (start_step == end_step) when train_steps < num_stages.

  Raises:
    ValueError: when min_image_size exceeds image_size.
  """
  if progressive is None:
    return [Stage(0, 1, 0, train_steps, image_size)]
  n, ibase = progressive.num_stages, progressive.min_image_size
  if ibase > image_size:
    raise ValueError(f"ProgressiveLearning.min_image_size={ibase} is larger "
                     f"than the training image size {image_size}")
  stages, start = [], 0
  for i in range(n):
    end = (i + 1) * train_steps // n
    size = ibase + (image_size - ibase) * (i + 1) // n
    values = {
        name: _interpolate(getattr(progressive, name), i, n)
        for name in _REGULARISERS
    }
    stages.append(Stage(i, n, start, end, size, **values))
    start = end
  return stages


def _interpolate(value_range, index, num_stages):
  """np.linspace(min, max, num_stages)[index]; one stage takes the max."""
  if value_range is None:
    return None
  low, high = value_range
  if num_stages == 1:
    return float(high)
  return low + (high - low) * index / (num_stages - 1)


def stage_at(stages, step):
  """The stage that trains step `step` (the last one once the run is done)."""
  for stage in stages:
    if step < stage.end_step:
      return stage
  return stages[-1]
