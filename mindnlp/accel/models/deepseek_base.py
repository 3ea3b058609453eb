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


# The fields DeepseekConfig takes beyond PretrainedConfig's own, with their defaults (the branch's).
FIELDS = {
    "vocab_size": 102400, "hidden_size": 4096, "intermediate_size": 11008, "moe_intermediate_size": 1407,
    "num_hidden_layers": 30, "num_attention_heads": 32, "num_key_value_heads": 32,
    "n_shared_experts": None, "n_routed_experts": None, "num_experts_per_tok": None, "moe_layer_freq": 1,
    "ep_size": 1, "first_k_dense_replace": 0, "norm_topk_prob": False, "scoring_func": "softmax",
    "aux_loss_alpha": 0.001, "seq_aux": True, "hidden_act": "silu", "max_position_embeddings": 2048,
    "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True, "pretraining_tp": 1,
    "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0,
}
# PretrainedConfig's own fields whose defaults deepseek sets otherwise.
BASE_DEFAULTS = {"pad_token_id": None, "bos_token_id": 100000, "eos_token_id": 100001, "tie_word_embeddings": False}


class DeepseekConfig(PretrainedConfig):
    """deepseek-moe's configuration, for a mindnlp without one: FIELDS, keyword arguments only.
    num_key_value_heads None means one per attention head; rope_scaling, when given, must be
    {"type": "linear" or "dynamic", "factor": a float above 1}."""

    model_type = "deepseek"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, **kwargs):
        for name, default in FIELDS.items():
            setattr(self, name, kwargs.pop(name, default))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        scaling = self.rope_scaling
        if scaling is not None and not (
                isinstance(scaling, dict) and set(scaling) == {"type", "factor"}
                and scaling["type"] in ("linear", "dynamic")
                and isinstance(scaling["factor"], float) and scaling["factor"] > 1.0):
            raise ValueError(f"rope_scaling must be {{'type': 'linear' or 'dynamic', 'factor': a float > 1}}, "
                             f"got {scaling!r}")
        super().__init__(**{**BASE_DEFAULTS, **kwargs})


class DeepseekPreTrainedModel(PreTrainedModel):
    """The pretrained-model base for DeepseekConfig. New weights: Linear and Embedding weights drawn
    from normal(0, initializer_range), biases and the padding row zero."""

    config_class = DeepseekConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]

    def _init_weights(self, module):
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            return
        nn.init.normal_(module.weight, 0.0, self.config.initializer_range)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
        if getattr(module, "padding_idx", None) is not None:
            module.weight[module.padding_idx] = 0


def config_and_base():
    """(config class, pretrained-model base): the stock ones where this mindnlp has them."""
    stock = import_optional("mindnlp.transformers.models.deepseek.modeling_deepseek")
    if stock is None:
        return DeepseekConfig, DeepseekPreTrainedModel
    return stock.DeepseekConfig, stock.DeepseekPreTrainedModel
