"""Vision Transformer (Dosovitskiy et al. 2020) as torchvision builds it: class token, learned position
embedding, pre-norm encoder blocks (LayerNorm eps 1e-6, exact GELU), a linear head on the class token.

Flax names map onto torchvision's (`encoder_layer_3.self_attention.in_proj` is
`encoder.layers.encoder_layer_3.self_attention.in_proj_weight`/`_bias`), so ImageNet weights of vit_b_16 map
one-to-one. ViT-Ti/16 and ViT-S/16 (timm's sizes; no torchvision weights) share the code. The position embedding
is sized by the image the model is initialised with, which must be divisible by the patch size; for 32x32 images
set `patch_size` to 4.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.core.errors import ConfigError
from jaxcls.models import MODELS, layers

_xavier = nn.initializers.xavier_uniform()


class SelfAttention(nn.Module):
  """Multi-head self-attention with torch's fused q/k/v projection (`in_proj`), so its weights map directly."""

  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Attention over the sequence, [B, L, D] -> [B, L, D]; `train` turns attention dropout on."""
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, kernel_init=_xavier, dtype=self.dtype, name="in_proj")(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.num_heads, head_dim), 3, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(self.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, dim)
    return nn.Dense(dim, dtype=self.dtype, name="out_proj")(y)


class EncoderBlock(nn.Module):
  """x + attention(LN(x)), then + MLP(LN(x)); each branch with dropout and stochastic depth."""

  num_heads: int
  mlp_dim: int
  activation: str = "gelu"
  negative_slope: float = 0.01
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """One pre-norm encoder block, [B, L, D] -> [B, L, D]; `train` turns dropout and drop-path on."""
    drop = functools.partial(nn.Dropout, self.dropout, deterministic=not train)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln_1")(x)
    y = SelfAttention(self.num_heads, self.attention_dropout, self.dtype, name="self_attention")(y, train)
    x = x + layers.DropPath(self.drop_path)(drop()(y), train)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln_2")(x)
    bias_init = nn.initializers.normal(1e-6)
    y = nn.Dense(self.mlp_dim, kernel_init=_xavier, bias_init=bias_init, dtype=self.dtype, name="mlp_0")(y)
    y = drop()(layers.Activation(self.activation, self.negative_slope, dtype=self.dtype)(y))
    y = nn.Dense(x.shape[-1], kernel_init=_xavier, bias_init=bias_init, dtype=self.dtype, name="mlp_3")(y)
    return x + layers.DropPath(self.drop_path)(drop()(y), train)


class VisionTransformer(nn.Module):
  """Patchify conv -> [class token; patches] + position embedding -> encoder blocks -> LN -> head on the token."""

  num_classes: int
  patch_size: int = 16
  hidden_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  activation: str = "gelu"
  negative_slope: float = 0.01  # leaky_relu only
  dropout: float = 0.0
  attention_dropout: float = 0.0
  stochastic_depth: float = 0.0  # drop rate of the last block's branches; earlier blocks rise linearly to it
  dtype: Any = jnp.float32

  TORCH_RENAMES: ClassVar = (
    (r"^pos_embedding$", "encoder.pos_embedding"),
    (r"^encoder_layer_(\d+)\.", r"encoder.layers.encoder_layer_\1."),
    (r"\.mlp_(\d+)\.", r".mlp.\1."),
    (r"\.self_attention\.in_proj\.(weight|bias)$", r".self_attention.in_proj_\1"),
    (r"^ln\.", "encoder.ln."),
    (r"^head\.", "heads.head."),
  )

  def __post_init__(self):
    layers.check_activation(self.activation)
    for what in ("dropout", "attention_dropout", "stochastic_depth"):
      layers.check_rate(what, getattr(self, what))
    if self.hidden_dim % self.num_heads:
      raise ConfigError(f"ViT hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Float32 logits from the class token; a ConfigError for a size the patches or position embedding do not fit."""
    batch, height, width, _ = x.shape
    p = self.patch_size
    if height % p or width % p:
      raise ConfigError(f"ViT image size {height}x{width} is not divisible by its patch_size {p}.")
    fan_in = p * p * x.shape[-1]
    x = nn.Conv(
      self.hidden_dim,
      (p, p),
      strides=(p, p),
      padding="VALID",
      dtype=self.dtype,
      kernel_init=nn.initializers.truncated_normal((1.0 / fan_in) ** 0.5),
      name="conv_proj",
    )(x)
    x = x.reshape(batch, -1, self.hidden_dim)
    token = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(token.astype(self.dtype), (batch, 1, self.hidden_dim)), x], axis=1)
    length = x.shape[1]
    if self.has_variable("params", "pos_embedding"):
      stored = self.get_variable("params", "pos_embedding").shape[1]
      if stored != length:
        raise ConfigError(
          f"This ViT was initialised for {stored - 1} patches, not {length - 1}: "
          "use the image size it was initialised (or converted) with."
        )
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, length, self.hidden_dim), jnp.float32)
    x = nn.Dropout(self.dropout, deterministic=not train)(x + pos.astype(self.dtype))
    rates = layers.drop_path_rates(self.stochastic_depth, self.num_layers)
    for i in range(self.num_layers):
      x = EncoderBlock(
        self.num_heads,
        self.mlp_dim,
        self.activation,
        self.negative_slope,
        self.dropout,
        self.attention_dropout,
        rates[i],
        self.dtype,
        name=f"encoder_layer_{i}",
      )(x, train)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln")(x)
    x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="head")(x[:, 0])
    return x.astype(jnp.float32)


_SIZES = {
  "vit_ti16": dict(hidden_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
  "vit_s16": dict(hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
  "vit_b16": dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
}
for _name, _size in _SIZES.items():
  MODELS.register(_name)(functools.partial(VisionTransformer, **_size))
