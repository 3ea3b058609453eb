"""The decoder the series' language models share: embedding, pre-norm blocks (attention, then a
dense MLP or an MoE), a final norm, with one rope table per forward shared by every layer.

What differs between Qwen2-MoE, deepseek, Llama and Qwen2-VL's language model is data: the
`DecoderConfig` a model file reads from its Hugging Face config, and the feed-forward block it
builds for each layer. Module names are Hugging Face's (embed_tokens, layers.{i}.self_attn,
layers.{i}.mlp, input_layernorm, post_attention_layernorm, norm), so checkpoints load as they are.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from mindnlp.core import nn

from .attention import Attention
from .norm import RMSNorm
from .rotary import RotaryEmbedding


@dataclass(frozen=True)
class DecoderConfig:
    """The shape and numerics of one decoder.

    rope_form: "table" (positions gathered from a table built at init) or "matmul" (angles per
        forward), whichever op the stock model uses, so the tables match bit for bit;
        max_positions bounds both. mrope_section: Qwen2-VL's M-RoPE channel split, or None.
    norm_kernel: RMSNorm's kernel policy (layers.norm.KERNELS).
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    max_positions: int
    head_dim: Optional[int] = None
    qkv_bias: bool = False
    o_bias: bool = False
    rope_form: str = "matmul"
    mrope_section: Optional[Sequence[int]] = None
    norm_kernel: str = "composite"
    pad_token_id: Optional[int] = None

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, config, **fields) -> "DecoderConfig":
        """The fields every Hugging Face decoder config names alike, then a model's own `fields`."""
        return cls(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                   num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
                   num_kv_heads=config.num_key_value_heads, rms_norm_eps=config.rms_norm_eps,
                   rope_theta=config.rope_theta, max_positions=config.max_position_embeddings,
                   pad_token_id=config.pad_token_id, **fields)


class DecoderLayer(nn.Module):
    """Pre-norm attention and feed-forward with residuals, in stock's order."""

    def __init__(self, spec: DecoderConfig, index: int, mlp: nn.Module):
        super().__init__()
        self.self_attn = Attention(spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_size,
                                   qkv_bias=spec.qkv_bias, o_bias=spec.o_bias, layer_idx=index)
        self.mlp = mlp
        self.input_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, kernel=spec.norm_kernel)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, kernel=spec.norm_kernel)

    def forward(self, hidden, rope, mask, cache, cache_write, kv_len=None):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), rope, mask, cache, cache_write, kv_len)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DecoderModel(nn.Module):
    """Embedding, `spec.num_layers` DecoderLayers with `feed_forward(index)` as their MLP, final norm.

    forward(hidden [B, S, H] embeddings, position_ids int [B, S] (or [3, B, S] with M-RoPE), mask
    AttentionMask or None, cache StaticKVCache or None, cache_position int32 [S], kv_len host int
    or None) -> normed hidden [B, S, H].
    """

    def __init__(self, spec: DecoderConfig, feed_forward: Callable[[int], nn.Module]):
        super().__init__()
        self.padding_idx = spec.pad_token_id
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([DecoderLayer(spec, i, feed_forward(i)) for i in range(spec.num_layers)])
        self.norm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, kernel=spec.norm_kernel)
        self.rotary = RotaryEmbedding(spec.head_size, base=spec.rope_theta, form=spec.rope_form,
                                      max_positions=spec.max_positions, mrope_section=spec.mrope_section)

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        """Build the rotary rows every forward gathers from before the first one: a tensor made during a
        graph's trace belongs to that trace (graphs.capture) and cannot be kept for later forwards."""
        self.rotary.prepare_rows(dtype, self.layers[0].self_attn.rotated_groups)

    def forward(self, hidden, position_ids, mask, cache=None, cache_position=None, kv_len=None):
        rope = self.rotary.grouped(position_ids, hidden.dtype, self.layers[0].self_attn.rotated_groups)
        cache_write = cache.prepare(cache_position) if cache is not None else None
        for layer in self.layers:
            hidden = layer(hidden, rope, mask, cache, cache_write, kv_len)
        return self.norm(hidden)
