"""Building blocks shared by the face encoder, decoder and discriminator.

Every parameter carries logical axis names (`nn.with_logical_partitioning`): conv kernels
`("kernel", ..., "conv_in", "conv_out")`, dense kernels `("embed", "mlp")`, norm scales `("norm",)`.
Activations are channels-last: 2D `(B, H, W, C)`, 3D `(B, D, H, W, C)`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

_DEFAULT_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def fast_init_key(rng: jax.Array) -> jax.Array:
  """An "rbg" key derived from `rng` for parameter init.

  Threefry-generated initial values of ~200 parameter tensors take XLA:CPU minutes to compile;
  RngBitGenerator takes seconds. Only the init distribution is affected, not its statistics.
  """
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")


def conv_kernel_names(ndim: int) -> tuple[str, ...]:
  """Logical names of a conv kernel with `ndim` spatial dims.

  Each spatial dim gets its own name because flax rejects a name repeated within one array.
  """
  return ("kernel_d", "kernel_h", "kernel_w")[3 - ndim:] + ("conv_in", "conv_out")


def num_groups(channels: int, groups: int) -> int:
  """The largest group count <= `groups` that divides `channels` (GroupNorm needs a divisor)."""
  return math.gcd(channels, groups) or 1


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """`silu` or `lrelu` (LeakyReLU 0.2, used by the discriminator)."""
  if name == "silu":
    return nn.silu
  if name == "lrelu":
    return lambda x: nn.leaky_relu(x, 0.2)
  raise ValueError(f"Unknown activation {name!r}; use 'silu' or 'lrelu'")


def space_to_depth(x: jax.Array, factor: int) -> jax.Array:
  """Patchify: (B, H, W, C) -> (B, H/f, W/f, C*f*f). A cheap stem that keeps all pixels."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // factor, factor, w // factor, factor, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // factor, w // factor, factor * factor * c)


def depth_to_space(x: jax.Array, factor: int) -> jax.Array:
  """Pixel shuffle, the inverse of `space_to_depth`: (B, H, W, C*f*f) -> (B, H*f, W*f, C)."""
  if factor == 1:
    return x
  b, h, w, cff = x.shape
  c = cff // (factor * factor)
  x = x.reshape(b, h, w, factor, factor, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * factor, w * factor, c)


def downsample(x: jax.Array, depth: bool = False) -> jax.Array:
  """2x average pooling over H, W (and D when `depth`), channels last, 2D or 3D."""
  if x.ndim == 4:
    return nn.avg_pool(x, (2, 2), (2, 2))
  window = (2, 2, 2) if depth else (1, 2, 2)
  return nn.avg_pool(x, window, window)


def upsample(x: jax.Array, depth: bool = False) -> jax.Array:
  """2x nearest-neighbour upsampling over H, W (and D when `depth`), 2D or 3D."""
  axes = (1, 2) if x.ndim == 4 else ((1, 2, 3) if depth else (2, 3))
  for a in axes:
    x = jnp.repeat(x, 2, axis=a)
  return x


class Conv(nn.Module):
  """N-d convolution (NHWC / NDHWC) with logical axis names and optional weight standardisation.

  Attributes:
    features: output channels.
    kernel_size: one int per spatial dim (2 for images, 3 for volumes).
    strides: stride per spatial dim (default 1).
    weight_std: standardise the kernel per output channel (MegaPortraits uses it with GroupNorm).
    zero_init: zero kernel and bias, for heads that must start as a no-op (flow, pose).
  """
  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...] | None = None
  use_bias: bool = True
  weight_std: bool = False
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nd = len(self.kernel_size)
    cin = x.shape[-1]
    init = nn.initializers.zeros if self.zero_init else _DEFAULT_INIT
    kernel = self.param("kernel", nn.with_logical_partitioning(init, conv_kernel_names(nd)),
                        (*self.kernel_size, cin, self.features), self.param_dtype)
    if self.weight_std and not self.zero_init:
      # Standardise over everything but the output channel; done in float32 for stability.
      k32 = kernel.astype(jnp.float32)
      mean = k32.mean(axis=tuple(range(nd + 1)), keepdims=True)
      var = k32.var(axis=tuple(range(nd + 1)), keepdims=True)
      kernel = (k32 - mean) * jax.lax.rsqrt(var + 1e-5) / math.sqrt(kernel[..., 0].size)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if nd == 3:
      y = conv3d_via_2d(x, kernel, self.strides)
    else:
      spatial = "HW"[-nd:]
      dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
      y = jax.lax.conv_general_dilated(x, kernel, window_strides=self.strides or (1,) * nd,
                                       padding="SAME", dimension_numbers=dn)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def conv3d_via_2d(x: jax.Array, kernel: jax.Array, strides=None) -> jax.Array:
  """'SAME' 3D convolution computed as one 2D convolution over depth-stacked inputs.

  The kd shifted copies of the input along D are stacked into channels and the (kd, kh, kw, I, O)
  kernel is folded to (kh, kw, kd*I, O). Exactly a 3D conv (stride 1), but XLA's 2D convolutions
  (and their gradients) are 4-7x faster than its 3D ones on CPU, and as good on GPU/TPU.

  Args:
    x: (B, D, H, W, I).
    kernel: (kd, kh, kw, I, O) with odd kd.
    strides: must be None or all ones.
  Returns:
    (B, D, H, W, O).
  """
  if strides is not None and tuple(strides) != (1, 1, 1):
    raise ValueError(f"3D convs support stride 1 only (pool instead), got {strides}")
  kd, kh, kw, cin, cout = kernel.shape
  if kd % 2 == 0:
    raise ValueError(f"3D conv depth kernel must be odd, got {kd}")
  b, d, h, w, _ = x.shape
  if kd > 1:
    pad = kd // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)))
    x = jnp.concatenate([xp[:, i:i + d] for i in range(kd)], axis=-1)  # (B, D, H, W, kd*I)
  k2 = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kd * cin, cout)
  y = jax.lax.conv_general_dilated(x.reshape(b * d, h, w, kd * cin), k2, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape(b, d, h, w, cout)


def dense(features: int, dtype: Dtype, param_dtype: Dtype, zero_init: bool = False,
          name: str | None = None) -> nn.Dense:
  """An `nn.Dense` whose kernel is named ("embed", "mlp") and bias ("mlp",)."""
  init = nn.initializers.zeros if zero_init else _DEFAULT_INIT
  return nn.Dense(
      features, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))


def group_norm(channels: int, groups: int, dtype: Dtype, param_dtype: Dtype,
               affine: bool = True, name: str | None = None) -> nn.GroupNorm:
  """GroupNorm with named scale/bias; `groups` is reduced to a divisor of `channels`."""
  return nn.GroupNorm(
      num_groups=num_groups(channels, groups), epsilon=1e-5, dtype=dtype, param_dtype=param_dtype,
      use_bias=affine, use_scale=affine, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class AdaptiveGroupNorm3D(nn.Module):
  """GroupNorm whose scale and shift come from a code: `GN(x) * (1 + s(code)) + b(code)`.

  Works for 2D and 3D activations. The code projections start at zero, so at initialisation the
  layer is a plain (affine-free) GroupNorm.

  Attributes:
    groups: GroupNorm groups (reduced to a divisor of the channels).
  """
  groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, code: jax.Array) -> jax.Array:
    """Args: x (B, ..., C); code (B, Dc). Returns (B, ..., C)."""
    c = x.shape[-1]
    h = group_norm(c, self.groups, self.dtype, self.param_dtype, affine=False, name="norm")(x)
    params = dense(2 * c, self.dtype, self.param_dtype, zero_init=True, name="to_scale_shift")(
        code.astype(self.dtype))  # (B, 2C)
    scale, shift = jnp.split(params, 2, axis=-1)
    bshape = (x.shape[0],) + (1,) * (x.ndim - 2) + (c,)
    return h * (1 + scale.reshape(bshape)) + shift.reshape(bshape)


class ResBlock2D(nn.Module):
  """Pre-activation residual block: GN -> act -> [up] -> conv3 -> GN -> act -> [down] -> conv3.

  Attributes:
    features: output channels.
    groups: GroupNorm groups.
    down / up: 2x average-pool / nearest upsampling inside the block (and on the skip path).
    act: "silu" or "lrelu".
  """
  features: int
  groups: int = 8
  down: bool = False
  up: bool = False
  act: str = "silu"
  weight_std: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x (B, H, W, Cin). Returns (B, H', W', features)."""
    return _res_block(self, x, ndim=2, code=None)


class ResBlock3D(nn.Module):
  """The 3D version of `ResBlock2D` on (B, D, H, W, C) volumes.

  Sampling acts on H, W only unless `depth_sampling` (depth is short: D=4..16). With a `code`
  argument the norms become `AdaptiveGroupNorm3D` (used by the warp generators).
  """
  features: int
  groups: int = 8
  down: bool = False
  up: bool = False
  depth_sampling: bool = False
  act: str = "silu"
  weight_std: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, code: jax.Array | None = None) -> jax.Array:
    """Args: x (B, D, H, W, Cin); code (B, Dc) or None. Returns (B, D', H', W', features)."""
    return _res_block(self, x, ndim=3, code=code)


def _res_block(m: nn.Module, x: jax.Array, ndim: int, code: jax.Array | None) -> jax.Array:
  """Shared body of the 2D/3D residual blocks (called inside the module's compact scope)."""
  act = activation(m.act)
  depth = getattr(m, "depth_sampling", False)
  k = (3,) * ndim
  conv = lambda f, ks, name: Conv(f, ks, weight_std=m.weight_std, dtype=m.dtype,  # noqa: E731
                                  param_dtype=m.param_dtype, name=name)

  def norm(h, name):
    if code is not None:
      return AdaptiveGroupNorm3D(m.groups, m.dtype, m.param_dtype, name=name)(h, code)
    return group_norm(h.shape[-1], m.groups, m.dtype, m.param_dtype, name=name)(h)

  h = act(norm(x, "norm1"))
  if m.up:
    h = upsample(h, depth)
  h = conv(m.features, k, "conv1")(h)
  h = act(norm(h, "norm2"))
  if m.down:  # pool before the second conv so it runs at the lower resolution
    h = downsample(h, depth)
  h = conv(m.features, k, "conv2")(h)
  skip = x
  if m.up:
    skip = upsample(skip, depth)
  if m.down:
    skip = downsample(skip, depth)
  if skip.shape[-1] != m.features:
    skip = conv(m.features, (1,) * ndim, "skip")(skip)
  return h + skip


@dataclasses.dataclass(frozen=True)
class FaceConfig:
  """Sizes of the stage-1 face models (a hashable copy of `config.model`, see configs/latent.py).

  `app_channels`, `app_depth`, `app_size` give V_app as (D, H, W, C) = (app_depth, app_size,
  app_size, app_channels).
  """
  resolution: int = 64
  app_channels: int = 8
  app_depth: int = 4
  app_size: int = 16
  enc_width: int = 16
  z_id_dim: int = 32
  z_pose_dim: int = 6
  z_dyn_dim: int = 16
  dec_width: int = 32
  g2d_blocks: int = 1
  disc_width: int = 16
  disc_scales: int = 2
  disc_layers: int = 3
  groups: int = 4
  weight_std: bool = False
  # Warp the source image itself in 2D (flow projected from the 3D warps) and let G2D paint
  # only what the warp cannot show (an occlusion mask blends the two). Not in MegaPortraits:
  # it makes small, briefly trained models sharp (see `FaceDecoder`).
  source_warp: bool = False
  # Pin z_pose angles / log scale and z_dyn[0] (mouth) to face-mesh labels where a frame has them
  # (`vasa_jax.models.motion_labels`), centred with these data-set statistics.
  label_motion: bool = False
  label_log_scale_mean: float = 0.0
  label_mouth_mean: float = 0.0
  label_mouth_std: float = 1.0

  @property
  def stem_factor(self) -> int:
    """Patchify factor of the encoder stems: convs never run above 128x128 (64x64 for R<=128)."""
    return max(2, self.resolution // 128)

  def validate(self) -> "FaceConfig":
    """Checks the sizes fit together; raises ValueError naming the config field to change."""
    r, s = self.resolution, self.app_size
    for name, v in (("resolution", r), ("app_size", s), ("app_depth", self.app_depth)):
      if v < 1 or v & (v - 1):
        raise ValueError(f"config.model.{name}={v} must be a power of two")
    if r < 2 * s or r // self.stem_factor < s:
      raise ValueError(f"config.model.app_size={s} is too large for resolution {r}; use <= "
                       f"{r // self.stem_factor}")
    if self.app_depth > s:
      raise ValueError(f"config.model.app_depth={self.app_depth} must be <= app_size={s}")
    if self.z_pose_dim != 6:
      raise ValueError(f"config.model.z_pose_dim must be 6 (yaw, pitch, roll, tx, ty, log "
                       f"scale), got {self.z_pose_dim}")
    return self


def as_face_config(config: Any) -> FaceConfig:
  """`FaceConfig` from a `config.model` ConfigDict / dict (unknown keys ignored) or itself."""
  if isinstance(config, FaceConfig):
    return config.validate()
  names = {f.name for f in dataclasses.fields(FaceConfig)}
  items = config.items() if hasattr(config, "items") else vars(config).items()
  return FaceConfig(**{k: v for k, v in items if k in names}).validate()


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Cosine similarity along the last axis. Args: a, b (..., D). Returns (...) float32."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
  return jnp.sum(a * b, axis=-1)
