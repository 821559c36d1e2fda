"""One EfficientNet block of any kind, applied to a symbolic tensor.

`efficientnet_block` builds what a `specs.Block` describes, in this order:

1. space-to-depth (EfficientNet-X/H): a 2x2 stride-2 convolution to the
   block's (4x) width, batch norm and activation;
2. the expansion and spatial mixing, by kind:
   * "depthwise" (MBConv, Sandler et al. 2018): 1x1 expansion (unless the
     expansion ratio is 1), k x k depthwise convolution;
   * "fused" (EfficientNet-X/H, EfficientNetV2's Fused-MBConv): one k x k
     convolution that expands; at expansion ratio 1 (EfficientNetV2's first
     stage, automl's FusedMBConvBlock) there is no expansion: the k x k
     convolution is the projection of step 4, carrying the stride and
     followed by the activation (no reference variant has such a stage);
   * "conv" (EdgeTPU): the same k x k expanding convolution (none at
     expansion ratio 1), never with squeeze-excite;
   each convolution followed by batch norm and the block's activation;
3. squeeze-excite, when the block has a bottleneck width;
4. 1x1 linear projection and batch norm;
5. stochastic depth and the identity shortcut, when the block has one.

In a CondConv block every one of these convolutions but squeeze-excite's is
a `condconv.CondConv`, routed by a sigmoid dense layer on the block input's
global average.

Layer names extend the block's prefix, e.g. `block2a_expand_conv`,
`block1a_space_to_depth_conv`, `block6a_routing`.
"""
import keras

from effnet_gin.model import condconv
from effnet_gin.model import layers
from effnet_gin.model import specs
from effnet_gin.model.activations import activation_function


def efficientnet_block(inputs, block: specs.Block, *, name: str,
                       survival_prob: float, num_experts: int = 0,
                       batch_norm_momentum: float = 0.99,
                       batch_norm_epsilon: float = 1e-3,
                       batch_norm_group_size=1):
  """Applies one block to `inputs`.

  Args:
    inputs: NHWC tensor (static height, width and channels for CondConv).
    block: what to build.
    name: prefix of the block's layer names, e.g. "block3b".
    survival_prob: stochastic depth survival probability of the residual
      branch; 1 disables it.
    num_experts: kernels per CondConv convolution (used if block.condconv).
    batch_norm_momentum: BatchNorm momentum.
    batch_norm_epsilon: BatchNorm epsilon.
    batch_norm_group_size: BatchNorm group_size.

  Returns:
    The block's output tensor.

  Raises:
    ValueError: for a CondConv block without experts.
  """
  if block.condconv and num_experts < 1:
    raise ValueError(f"CondConv block {name!r} needs num_experts >= 1, got "
                     f"{num_experts!r}.")
  bn_args = dict(momentum=batch_norm_momentum, epsilon=batch_norm_epsilon,
                 group_size=batch_norm_group_size)
  routing = None
  if block.condconv:
    pooled = keras.layers.GlobalAveragePooling2D(
        name=f"{name}_routing_pool")(inputs)
    routing = keras.layers.Dense(num_experts, activation="sigmoid",
                                 name=f"{name}_routing")(pooled)

  def conv_bn(x, part, bn_part, filters, kernel_size, strides=1,
              activation=None, depthwise=False):
    x = _convolution(x, filters, kernel_size, strides, f"{name}_{part}",
                     routing, num_experts, depthwise)
    x = layers.BatchNorm(name=f"{name}_{bn_part}", **bn_args)(x)
    if activation:
      x = keras.layers.Activation(
          activation_function(activation),
          name=f"{name}_{bn_part.replace('bn', 'activation')}")(x)
    return x

  x = inputs
  act = block.activation
  if block.space_to_depth:
    # Not routed: the reference's space-to-depth convolution is a plain one.
    x = layers.conv_bn_act(x, block.input_filters, 2, 2, act,
                           name=f"{name}_space_to_depth_conv",
                           bn_name=f"{name}_space_to_depth_bn",
                           act_name=f"{name}_space_to_depth_activation",
                           batch_norm_momentum=batch_norm_momentum,
                           batch_norm_epsilon=batch_norm_epsilon,
                           batch_norm_group_size=batch_norm_group_size)
  if block.conv_type == "depthwise":
    if block.expand_ratio != 1:
      x = conv_bn(x, "expand_conv", "expand_bn", block.expanded_filters, 1,
                  activation=act)
    x = conv_bn(x, "dwconv", "bn", None, block.kernel_size, block.strides,
                activation=act, depthwise=True)
  elif block.expand_ratio != 1:
    x = conv_bn(x, "expand_conv", "expand_bn", block.expanded_filters,
                block.kernel_size, block.strides, activation=act)
  if block.se_filters:
    x = layers.squeeze_excite(x, block.se_filters, act, name=name)
  fused_projection = block.conv_type == "fused" and block.expand_ratio == 1
  project_strides = (block.strides if block.conv_type != "depthwise" and
                     block.expand_ratio == 1 else 1)
  x = conv_bn(x, "project_conv", "project_bn", block.output_filters,
              block.kernel_size if fused_projection else 1, project_strides,
              activation=act if fused_projection else None)
  if block.skip:
    x = layers.StochasticDepth(survival_prob, name=f"{name}_drop")(x)
    x = keras.layers.Add(name=f"{name}_add")([x, inputs])
  return x


def _convolution(x, filters, kernel_size, strides, name, routing, num_experts,
                 depthwise):
  """A bias-free "same" convolution; a CondConv one when routed."""
  if routing is not None:
    return condconv.CondConv(filters or 1, kernel_size, num_experts=num_experts,
                             strides=strides, depthwise=depthwise,
                             name=name)([x, routing])
  if depthwise:
    return keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding="same", use_bias=False,
        depthwise_initializer=layers.conv_kernel_initializer(), name=name)(x)
  return keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding="same", use_bias=False,
      kernel_initializer=layers.conv_kernel_initializer(), name=name)(x)
