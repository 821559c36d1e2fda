"""What an export outputs: the logits, their softmax, or a named endpoint.

The reference's `export_model.py` exports `softmax(logits)` by default and,
with `--endpoint_name`, one tensor of its model's endpoint dict instead.
`output_model` gives the Keras model of one such output, under the
reference's endpoint names:

  logits, head      the classifier's logits [N, classes] (the default).
  stem              the stem's activation (stride 2).
  reduction_1 ..    the last block output at each resolution (strides 2, 4,
  reduction_K       8, 16, 32 for B0): the output of the block before each
                    block that reduces the resolution, and of the last block.
  features          the last block's output (= the last reduction_K).
  head_1x1          the head's 1x1 convolution after batch norm and
                    activation (`build_model(return_endpoints=True)`'s
                    "features").
  pooled_features   the head averaged over its feature map, [N, C] (the
  global_pool       reference's is [N, 1, 1, C] for local pooling); at
                    inference `global_pool` (after dropout) is the same.

`OUTPUTS` are what the logits can be exported as: 'logits' or
'probabilities' (their softmax, as the reference's TFLite export).
"""
import keras

OUTPUTS = ("logits", "probabilities")
LOGITS = "logits"


def endpoint_names(endpoints):
  """The endpoint names a model with `build_model`'s endpoint dict offers."""
  reductions = sorted(
      (name for name in endpoints if name.startswith("reduction_")),
      key=lambda name: int(name.split("_")[1]))
  return [
      "logits", "head", "stem", *reductions, "features", "head_1x1",
      "pooled_features", "global_pool"
  ]


def check_output(endpoint, output):
  """Raises ValueError for an unknown output, or probabilities of features.

  Args:
    endpoint: the endpoint name, None for the logits.
    output: 'logits' or 'probabilities'; None for the format's default.
  """
  if output is not None and output not in OUTPUTS:
    raise ValueError(f"unknown output {output!r}; choose one of "
                     f"{', '.join(OUTPUTS)}")
  if output == "probabilities" and endpoint not in (None, "logits", "head"):
    raise ValueError(f"output='probabilities' is the softmax of the logits; "
                     f"endpoint {endpoint!r} is not the logits")


def _tensor(model, endpoints, endpoint):
  """The tensor of `endpoint` in `model`, whose outputs are `endpoints`."""
  if endpoint in ("logits", "head"):
    return endpoints["logits"]
  if endpoint == "stem":
    return model.get_layer("stem_activation").output
  if endpoint == "head_1x1":
    return endpoints["features"]
  if endpoint in ("pooled_features", "global_pool"):
    names = [layer.name for layer in model.layers]
    pool = "avg_pool_flatten" if "avg_pool_flatten" in names else "avg_pool"
    return model.get_layer(pool).output
  reductions = [name for name in endpoints if name.startswith("reduction_")]
  if endpoint == "features":
    return endpoints[f"reduction_{len(reductions)}"]
  return endpoints[endpoint]


def output_model(model, *, endpoint=None, output=None, endpoints_builder=None):
  """A model from `model`'s input to one output, sharing its weights.

  Args:
    model: a Keras model from `build_model` (images -> logits) holding the
      weights to export.
    endpoint: one of `endpoint_names`; None (or 'logits') keeps the logits.
    output: 'probabilities' appends a float32 softmax to the logits;
      'logits' or None leaves them.
    endpoints_builder: `endpoints_builder()` builds the same architecture
      with `return_endpoints=True` (needed for an endpoint other than the
      logits); its weights are set from `model`, layer by layer.

  Returns:
    `model` itself for the plain logits, else a new functional model with
    one output, named by the endpoint (or 'probabilities').

  Raises:
    ValueError: for an unknown endpoint (naming the valid ones) or output.
  """
  check_output(endpoint, output)
  if endpoint in (None, "logits", "head"):
    if output != "probabilities":
      return model
    probabilities = keras.layers.Softmax(dtype="float32",
                                         name="probabilities")(model.output)
    return keras.Model(model.inputs, probabilities, name=model.name)
  full = endpoints_builder()
  names = endpoint_names(full.output)
  if endpoint not in names:
    raise ValueError(f"unknown endpoint {endpoint!r}; this model has "
                     f"{', '.join(names)}")
  for layer in full.layers:
    if layer.weights:
      layer.set_weights(model.get_layer(layer.name).get_weights())
  tensor = _tensor(full, full.output, endpoint)
  return keras.Model(full.inputs, tensor, name=model.name)
