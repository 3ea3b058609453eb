"""Offline model fixtures: small checkpoints in Hugging Face layout with seeded random weights.

Four families stand in for the judged models. Each has three sizes:
  tiny      2 layers, few experts, narrow: loads and generates in seconds, for tests;
  mixed     tiny with the shapes tiny lacks: 3 layers, grouped KV heads (GQA), dense layers
            among the sparse ones, other expert and top-k counts;
  topology  the real model's layer, expert, top-k, head and vocabulary counts at small widths:
            the CPU stand-in for host-side cost (operator launches and syncs scale with these
            counts, not with width).
Every size keeps the real vocabulary and special-token ids, so tokenizers and the ids the
configs depend on (Qwen2-VL's image tokens, eos/pad) are the real ones.

Real configuration values, from the public configs (see each *_REAL table):
  qwen2_moe  Qwen/Qwen1.5-MoE-A2.7B-Chat
  deepseek   deepseek-ai/deepseek-moe-16b-chat (field names of the 0.4 branch's DeepseekConfig)
  qwen2_vl   Qwen/Qwen2-VL-2B-Instruct
  llama      the language model of deepseek-ai/Janus-Pro-7B (its language_config; the fields it
             leaves out take LlamaConfig defaults, e.g. bos 1 / eos 2, which is why Janus passes
             the tokenizer's ids to generate)

Usage: python eval/fixtures.py --family qwen2_moe --size topology --out DIR
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import zlib

import ml_dtypes
import numpy as np

import fixture_tokenizer
from fixture_tokenizer import TokenizerSpec

FAMILIES = ("qwen2_moe", "deepseek", "qwen2_vl", "llama")
SIZES = ("tiny", "mixed", "topology")
COMPLETE_MARKER = ".fixture-complete"

# Logit scale: lm_head rows are drawn so that logits have this standard deviation over a unit-RMS
# final hidden state; over 1e5 tokens that leaves a clear top-1 margin (peaked, not uniform).
LOGIT_STD = 12.0
# Router logits get this standard deviation, so each token prefers a few experts clearly.
ROUTER_STD = 2.0
# Input embeddings are small next to what the layers add (their inputs are normalised, their
# outputs about unit-scale), and queries and keys are scaled up so attention is sharp: together
# they make the next token depend on the context, not mostly on the last token, so prompts that
# end alike still decode differently and a broken cache or mask changes the output.
EMBED_STD = 0.1
QK_GAIN = 2.0
# Rows of ids the model should never emit (special, reserved, unknown) are scaled by this, so
# greedy decoding always runs the full number of new tokens through ordinary, decodable tokens.
DAMPED_ROW_SCALE = 0.05

QWEN2_MOE_REAL = {
    "architectures": ["Qwen2MoeForCausalLM"],
    "model_type": "qwen2_moe",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_experts": 60,
    "num_experts_per_tok": 4,
    "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632,
    "decoder_sparse_step": 1,
    "norm_topk_prob": False,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 21,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}

DEEPSEEK_REAL = {
    "architectures": ["DeepseekForCausalLM"],
    "model_type": "deepseek",
    "vocab_size": 102400,
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "num_experts_per_tok": 6,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "norm_topk_prob": False,
    "scoring_func": "softmax",
    "aux_loss_alpha": 0.001,
    "seq_aux": True,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "pretraining_tp": 1,
    "initializer_range": 0.02,
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}

QWEN2_VL_REAL = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "use_sliding_window": False,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
    },
}

LLAMA_REAL = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 102400,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 30,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 16384,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "pretraining_tp": 1,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}

# Reduced widths for the topology size; every count (layers, experts, top-k, heads, kv heads,
# vocabulary) stays real. Head dims: 4 for the MoE models and Llama (hidden 64 or 128 over 16 or
# 32 heads), 16 for Qwen2-VL so that mrope_section [16, 24, 24] over head_dim 128 scales exactly
# to [2, 3, 3] over head_dim 16.
TOPOLOGY_WIDTHS = {
    "qwen2_moe": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 128,
    },
    "deepseek": {"hidden_size": 64, "intermediate_size": 344, "moe_intermediate_size": 32},
    "qwen2_vl": {
        "hidden_size": 192,
        "intermediate_size": 384,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {"embed_dim": 64, "hidden_size": 192},
    },
    "llama": {"hidden_size": 128, "intermediate_size": 344},
}

# Tiny: two layers, few experts, fewer heads (GQA ratio kept for Qwen2-VL: 6 query heads per kv head).
TINY_OVERRIDES = {
    "qwen2_moe": {
        "num_hidden_layers": 2,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_window_layers": 2,
    },
    "deepseek": {
        "num_hidden_layers": 2,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    "qwen2_vl": {
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "num_key_value_heads": 1,
        "hidden_size": 96,
        "intermediate_size": 192,
        "max_window_layers": 2,
        "vision_config": {"depth": 2, "embed_dim": 32, "num_heads": 4, "hidden_size": 96},
    },
    "llama": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "hidden_size": 64,
              "intermediate_size": 128},
}

# Mixed: applied over tiny.
MIXED_OVERRIDES = {
    "qwen2_moe": {"num_hidden_layers": 3, "num_key_value_heads": 2, "mlp_only_layers": [1], "num_experts": 6,
                  "num_experts_per_tok": 3, "norm_topk_prob": True, "max_window_layers": 3},
    "deepseek": {"num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 6,
                 "num_experts_per_tok": 3, "norm_topk_prob": True},
    "qwen2_vl": {"num_hidden_layers": 3, "num_key_value_heads": 2, "max_window_layers": 3},
    "llama": {"num_hidden_layers": 3, "num_key_value_heads": 2},
}

REAL_CONFIGS = {"qwen2_moe": QWEN2_MOE_REAL, "deepseek": DEEPSEEK_REAL, "qwen2_vl": QWEN2_VL_REAL, "llama": LLAMA_REAL}

# Generation configs as the real repositories ship them (Janus's LM has none: this is what
# GenerationConfig.from_model_config makes of its config). The judge decodes greedily, so only
# ids and repetition_penalty matter, and repetition_penalty does.
GENERATION_CONFIGS = {
    "qwen2_moe": {"bos_token_id": 151643, "pad_token_id": 151643, "eos_token_id": [151645, 151643],
                  "do_sample": True, "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20},
    "deepseek": {"bos_token_id": 100000, "eos_token_id": 100001, "do_sample": True, "temperature": 0.3,
                 "top_p": 0.95},
    "qwen2_vl": {"bos_token_id": 151643, "pad_token_id": 151643, "eos_token_id": [151645, 151643],
                 "do_sample": True, "repetition_penalty": 1.0, "temperature": 0.01, "top_p": 0.001, "top_k": 1},
    "llama": {"bos_token_id": 1, "eos_token_id": 2},
}

QWEN_SPECIALS = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}
QWEN2_VL_SPECIALS = {
    **QWEN_SPECIALS,
    151646: "<|object_ref_start|>",
    151647: "<|object_ref_end|>",
    151648: "<|box_start|>",
    151649: "<|box_end|>",
    151650: "<|quad_start|>",
    151651: "<|quad_end|>",
    151652: "<|vision_start|>",
    151653: "<|vision_end|>",
    151654: "<|vision_pad|>",
    151655: "<|image_pad|>",
    151656: "<|video_pad|>",
}
DEEPSEEK_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
DEEPSEEK_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
DEEPSEEK_SPECIALS = {100000: DEEPSEEK_BOS, 100001: DEEPSEEK_EOS}
# Janus adds its image and pad tags to the DeepSeek tokenizer (ids as published by Janus; the LM
# config does not depend on them).
JANUS_SPECIALS = {
    **DEEPSEEK_SPECIALS,
    100015: "<\uff5c\u2581pad\u2581\uff5c>",
    100016: "<begin_of_image>",
    100581: "<image_placeholder>",
    100593: "<end_of_image>",
}

# Chat templates in each model's style, written for these fixtures.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n\n"
    "{% else %}Assistant: {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
JANUS_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}<|User|>: {{ message['content'] }}\n\n"
    "{% else %}<|Assistant|>: {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)

TOKENIZERS = {
    "qwen2_moe": dict(spec=TokenizerSpec(151643, QWEN_SPECIALS, 151646), tokenizer_class="Qwen2Tokenizer",
                      chat_template=CHATML_TEMPLATE,
                      roles={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "deepseek": dict(spec=TokenizerSpec(100000, DEEPSEEK_SPECIALS, 100015, bos=DEEPSEEK_BOS),
                     tokenizer_class="LlamaTokenizerFast", chat_template=DEEPSEEK_TEMPLATE,
                     roles={"eos_token": DEEPSEEK_EOS, "pad_token": DEEPSEEK_EOS, "legacy": True}),
    "qwen2_vl": dict(spec=TokenizerSpec(151643, QWEN2_VL_SPECIALS, 151657, extra_config={
                         "processor_class": "Qwen2VLProcessor"}),
                     tokenizer_class="Qwen2Tokenizer", chat_template=CHATML_TEMPLATE,
                     roles={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "llama": dict(spec=TokenizerSpec(100000, JANUS_SPECIALS, 100594, bos=DEEPSEEK_BOS),
                  tokenizer_class="LlamaTokenizerFast", chat_template=JANUS_TEMPLATE,
                  roles={"eos_token": DEEPSEEK_EOS, "pad_token": JANUS_SPECIALS[100015], "legacy": True}),
}

# Qwen2-VL image processor: the real Qwen2-VL-2B-Instruct fields, limits included, so the judge's
# images make the judge's grids (demo_images: 999, 324 and 70 image tokens).
QWEN2_VL_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "do_convert_rgb": True,
}


def _merge(base, overrides):
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "rope_scaling":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_family_size(family, size):
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")


def model_config(family, size):
    """The config.json contents for a family and size."""
    _check_family_size(family, size)
    config = _merge(REAL_CONFIGS[family], TOPOLOGY_WIDTHS[family])
    if size in ("tiny", "mixed"):
        config = _merge(config, TINY_OVERRIDES[family])
    if size == "mixed":
        config = _merge(config, MIXED_OVERRIDES[family])
    heads = config["num_attention_heads"]
    if config["hidden_size"] % heads:
        raise ValueError(f"{family}/{size}: hidden_size {config['hidden_size']} not divisible by {heads} heads")
    if family == "qwen2_vl":
        head_dim = config["hidden_size"] // heads
        if 2 * sum(config["rope_scaling"]["mrope_section"]) != head_dim:
            raise ValueError(f"{family}/{size}: mrope_section must sum to head_dim/2 = {head_dim // 2}")
        if config["vision_config"]["hidden_size"] != config["hidden_size"]:
            raise ValueError(f"{family}/{size}: the vision merger must project to the LM's hidden_size")
    return config


def _attention_params(prefix, config, bias):
    hidden = config["hidden_size"]
    head_dim = hidden // config["num_attention_heads"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config["num_key_value_heads"] * head_dim
    params = [
        (f"{prefix}.q_proj.weight", (q_out, hidden)),
        (f"{prefix}.k_proj.weight", (kv_out, hidden)),
        (f"{prefix}.v_proj.weight", (kv_out, hidden)),
        (f"{prefix}.o_proj.weight", (hidden, q_out)),
    ]
    if bias:
        params += [(f"{prefix}.q_proj.bias", (q_out,)), (f"{prefix}.k_proj.bias", (kv_out,)),
                   (f"{prefix}.v_proj.bias", (kv_out,))]
    return params


def _mlp_params(prefix, hidden, intermediate):
    return [
        (f"{prefix}.gate_proj.weight", (intermediate, hidden)),
        (f"{prefix}.up_proj.weight", (intermediate, hidden)),
        (f"{prefix}.down_proj.weight", (hidden, intermediate)),
    ]


def _feed_forward_params(family, prefix, layer, config):
    """The MLP or MoE block of one decoder layer, under its checkpoint names."""
    hidden = config["hidden_size"]
    if family == "qwen2_moe":
        sparse = (layer not in config.get("mlp_only_layers", []) and config["num_experts"] > 0
                  and (layer + 1) % config["decoder_sparse_step"] == 0)
        if not sparse:
            return _mlp_params(prefix, hidden, config["intermediate_size"])
        params = [(f"{prefix}.gate.weight", (config["num_experts"], hidden))]
        for expert in range(config["num_experts"]):
            params += _mlp_params(f"{prefix}.experts.{expert}", hidden, config["moe_intermediate_size"])
        params += _mlp_params(f"{prefix}.shared_expert", hidden, config["shared_expert_intermediate_size"])
        params.append((f"{prefix}.shared_expert_gate.weight", (1, hidden)))
        return params
    if family == "deepseek":
        sparse = layer >= config["first_k_dense_replace"] and layer % config["moe_layer_freq"] == 0
        if not sparse:
            return _mlp_params(prefix, hidden, config["intermediate_size"])
        params = [(f"{prefix}.gate.weight", (config["n_routed_experts"], hidden))]
        for expert in range(config["n_routed_experts"]):
            params += _mlp_params(f"{prefix}.experts.{expert}", hidden, config["moe_intermediate_size"])
        shared = config["moe_intermediate_size"] * config["n_shared_experts"]
        params += _mlp_params(f"{prefix}.shared_experts", hidden, shared)
        return params
    return _mlp_params(prefix, hidden, config["intermediate_size"])


def _vision_params(vision):
    embed = vision["embed_dim"]
    mlp = embed * vision["mlp_ratio"]
    merged = embed * vision["spatial_merge_size"] ** 2
    patch = (embed, 3, vision["temporal_patch_size"], vision["patch_size"], vision["patch_size"])
    params = [("visual.patch_embed.proj.weight", patch)]
    for block in range(vision["depth"]):
        prefix = f"visual.blocks.{block}"
        params += [
            (f"{prefix}.norm1.weight", (embed,)), (f"{prefix}.norm1.bias", (embed,)),
            (f"{prefix}.norm2.weight", (embed,)), (f"{prefix}.norm2.bias", (embed,)),
            (f"{prefix}.attn.qkv.weight", (3 * embed, embed)), (f"{prefix}.attn.qkv.bias", (3 * embed,)),
            (f"{prefix}.attn.proj.weight", (embed, embed)), (f"{prefix}.attn.proj.bias", (embed,)),
            (f"{prefix}.mlp.fc1.weight", (mlp, embed)), (f"{prefix}.mlp.fc1.bias", (mlp,)),
            (f"{prefix}.mlp.fc2.weight", (embed, mlp)), (f"{prefix}.mlp.fc2.bias", (embed,)),
        ]
    params += [
        ("visual.merger.ln_q.weight", (embed,)), ("visual.merger.ln_q.bias", (embed,)),
        ("visual.merger.mlp.0.weight", (merged, merged)), ("visual.merger.mlp.0.bias", (merged,)),
        ("visual.merger.mlp.2.weight", (vision["hidden_size"], merged)),
        ("visual.merger.mlp.2.bias", (vision["hidden_size"],)),
    ]
    return params


def param_shapes(family, config):
    """(checkpoint name, shape) for every weight of the family's model, in a fixed order."""
    hidden = config["hidden_size"]
    bias = family in ("qwen2_moe", "qwen2_vl") or config.get("attention_bias", False)
    params = [("model.embed_tokens.weight", (config["vocab_size"], hidden))]
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        params += [(f"{prefix}.input_layernorm.weight", (hidden,)),
                   (f"{prefix}.post_attention_layernorm.weight", (hidden,))]
        params += _attention_params(f"{prefix}.self_attn", config, bias)
        params += _feed_forward_params(family, f"{prefix}.mlp", layer, config)
    params.append(("model.norm.weight", (hidden,)))
    if not config["tie_word_embeddings"]:
        params.append(("lm_head.weight", (config["vocab_size"], hidden)))
    if family == "qwen2_vl":
        params += _vision_params(config["vision_config"])
    return params


def _draw(name, shape, config, damped_ids, seed):
    """One weight tensor, float32, from a generator seeded by (seed, name) so that every tensor is
    independent of the others' order and count."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    noise = rng.standard_normal(shape, dtype=np.float32)
    hidden = config["hidden_size"]
    if name == "model.norm.weight" and config["tie_word_embeddings"]:
        # Tied: logits are the embeddings times the final norm's output, so the norm carries the
        # logit scale. Random signs, because with a positive norm every token would predict
        # itself (e_i . e_i dominates) and decoding would repeat one token.
        signs = np.where(rng.standard_normal(shape, dtype=np.float32) < 0, -1.0, 1.0).astype(np.float32)
        return signs * (1.0 + 0.1 * noise) * np.float32(LOGIT_STD / (EMBED_STD * np.sqrt(hidden)))
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight")):
        return 1.0 + 0.1 * noise
    if name.endswith(".bias"):
        return 0.1 * noise
    if name == "lm_head.weight" or (name == "model.embed_tokens.weight" and config["tie_word_embeddings"]):
        weight = noise * np.float32(LOGIT_STD / np.sqrt(hidden) if name == "lm_head.weight" else EMBED_STD)
        weight[damped_ids] *= np.float32(DAMPED_ROW_SCALE)
        return weight
    if name == "model.embed_tokens.weight":
        return noise * np.float32(EMBED_STD)
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        return noise * np.float32(QK_GAIN / np.sqrt(hidden))
    if name.endswith("mlp.gate.weight"):
        return noise * np.float32(ROUTER_STD / np.sqrt(hidden))
    fan_in = int(np.prod(shape[1:]))
    return noise * np.float32(1.0 / np.sqrt(fan_in))


def damped_ids(family, config):
    """Ids whose output rows are damped: everything but the ordinary decodable tokens."""
    spec = TOKENIZERS[family]["spec"]
    ids = [fixture_tokenizer.UNK_ID] + list(range(spec.n_regular, config["vocab_size"]))
    return np.asarray(ids, dtype=np.int64)


def write_safetensors(path, tensors):
    """Write name -> numpy array (float32 or bfloat16) as a safetensors file, names sorted so the
    bytes depend only on the contents."""
    dtype_names = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}
    header, offset = {}, 0
    names = sorted(tensors)
    for name in names:
        array = tensors[name]
        if array.dtype not in dtype_names:
            raise TypeError(f"{name}: unsupported dtype {array.dtype}")
        header[name] = {"dtype": dtype_names[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name in names:
            handle.write(np.ascontiguousarray(tensors[name]).tobytes())


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _write_json(path, data):
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def build(family, size, out_dir, seed=0):
    """Write a complete fixture for family/size into out_dir (created or overwritten); returns out_dir."""
    config = model_config(family, size)
    os.makedirs(out_dir, exist_ok=True)
    damped = damped_ids(family, config)
    tensors = {
        name: _draw(name, shape, config, damped, seed).astype(ml_dtypes.bfloat16)
        for name, shape in param_shapes(family, config)
    }
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors)
    _write_json(os.path.join(out_dir, "config.json"), config)
    _write_json(os.path.join(out_dir, "generation_config.json"), GENERATION_CONFIGS[family])
    tokenizer = TOKENIZERS[family]
    files = fixture_tokenizer.tokenizer_files(tokenizer["spec"], tokenizer["tokenizer_class"],
                                              tokenizer["chat_template"], tokenizer["roles"])
    for name, text in files.items():
        _write_text(os.path.join(out_dir, name), text)
    if family == "qwen2_vl":
        _write_json(os.path.join(out_dir, "preprocessor_config.json"), QWEN2_VL_PREPROCESSOR)
        _write_json(os.path.join(out_dir, "chat_template.json"), {"chat_template": tokenizer["chat_template"]})
    return out_dir


def fixture_key(family, size, seed=0):
    """A short hash of everything that determines a fixture's bytes: the generator's parameters
    and the source of the modules that write it."""
    here = os.path.dirname(os.path.abspath(__file__))
    sources = [open(os.path.join(here, name), encoding="utf-8").read()
               for name in ("fixtures.py", "fixture_tokenizer.py")]
    payload = json.dumps({"family": family, "size": size, "seed": seed,
                          "config": model_config(family, size), "sources": sources}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def ensure(family, size, root, seed=0):
    """Path of a complete cached fixture under root, building it when missing or partial.

    A fixture counts as complete only once its marker file is written, after everything else;
    it is built in a temporary sibling directory and renamed into place.
    """
    key = fixture_key(family, size, seed)
    path = os.path.join(root, f"{family}-{size}-{key}")
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        return path
    staging = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    build(family, size, staging, seed=seed)
    _write_text(os.path.join(staging, COMPLETE_MARKER), key + "\n")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--size", required=True, choices=SIZES)
    parser.add_argument("--out", required=True, help="directory to write the fixture into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build(args.family, args.size, args.out, seed=args.seed)
    print(args.out)


if __name__ == "__main__":
    sys.exit(main())
