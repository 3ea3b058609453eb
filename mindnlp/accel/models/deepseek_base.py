"""deepseek's config class and pretrained-model base, for a mindnlp that has no deepseek model.

mindnlp's 0.4 branch has deepseek (mindnlp/transformers/models/deepseek/); the 0.4.1 wheel does not.
`config_and_base()` gives the branch's own classes where they exist, so that ours registers over
stock's under the same config class, and the ones below where they do not, so that a deepseek
checkpoint still loads through AutoModelForCausalLM. The config takes the fields and defaults the
branch's DeepseekConfig takes (model_type "deepseek").
"""
from mindnlp.core import nn
from mindnlp.transformers.configuration_utils import PretrainedConfig
from mindnlp.transformers.modeling_utils import PreTrainedModel

from ..registry import import_optional


class DeepseekConfig(PretrainedConfig):
    """deepseek-moe's configuration, for a mindnlp without one; see the branch's DeepseekConfig."""

    model_type = "deepseek"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=102400, hidden_size=4096, intermediate_size=11008, moe_intermediate_size=1407,
                 num_hidden_layers=30, num_attention_heads=32, num_key_value_heads=32, n_shared_experts=None,
                 n_routed_experts=None, num_experts_per_tok=None, moe_layer_freq=1, ep_size=1,
                 first_k_dense_replace=0, norm_topk_prob=False, scoring_func="softmax", aux_loss_alpha=0.001,
                 seq_aux=True, hidden_act="silu", max_position_embeddings=2048, initializer_range=0.02,
                 rms_norm_eps=1e-6, use_cache=True, pad_token_id=None, bos_token_id=100000, eos_token_id=100001,
                 pretraining_tp=1, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
                 attention_bias=False, attention_dropout=0.0, **kwargs):
        if rope_scaling is not None and (
                not isinstance(rope_scaling, dict) or rope_scaling.get("type") not in ("linear", "dynamic")
                or not isinstance(rope_scaling.get("factor"), float) or rope_scaling["factor"] <= 1.0):
            raise ValueError(f"rope_scaling must be {{'type': 'linear' or 'dynamic', 'factor': a float > 1}}, "
                             f"got {rope_scaling!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.n_shared_experts = n_shared_experts
        self.n_routed_experts = n_routed_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layer_freq = moe_layer_freq
        self.ep_size = ep_size
        self.first_k_dense_replace = first_k_dense_replace
        self.norm_topk_prob = norm_topk_prob
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.pretraining_tp = pretraining_tp
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class DeepseekPreTrainedModel(PreTrainedModel):
    """The pretrained-model base for DeepseekConfig: normal(0, initializer_range) weights."""

    config_class = DeepseekConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx] = 0


def config_and_base():
    """(config class, pretrained-model base): the stock ones where this mindnlp has them."""
    stock = import_optional("mindnlp.transformers.models.deepseek.modeling_deepseek")
    if stock is None:
        return DeepseekConfig, DeepseekPreTrainedModel
    return stock.DeepseekConfig, stock.DeepseekPreTrainedModel
