"""deepseek-moe as the 0.4 branch's stock code computes it, op by op, in the test's dtype.

CI's base (the 0.4.1 wheel) has no deepseek, so tests/test_deepseek.py compares ours with this
reference there; where the base is the branch, it first proves the reference bit-identical to the
branch's real stock model. Each step is the op stock runs off the pyboost path (the CPU backend),
in stock's order and dtype (shared/research/deepseek.md, section 2):
  - RMSNorm in float32, cast back to the activation dtype before the weight;
  - rope cos/sin from an fp32 outer product, cast to the activation dtype, gathered by position;
    q * cos + rotate_half(q) * sin in the activation dtype;
  - scores = q @ k^T / sqrt(head_dim) in the activation dtype, plus stock's additive mask (the
    dtype's minimum above the diagonal at prefill, zeros at decode), softmax in float32 cast back;
  - the router: F.linear, softmax in the activation dtype, topk(sorted=False), renormalised
    (+1e-20) only for top_k > 1 with norm_topk_prob;
  - the routed experts in a Python loop over expert ids in ascending order, each expert over
    exactly its own tokens (rows in argsort's order), its weighted outputs added into a buffer of
    the activation dtype that starts at zero; then the shared experts as one MLP, added;
  - the LM head over every position, cast to float32; the KV cache grown by concatenation.
The host reads (the token counts per expert) are the reference's business: it is a test oracle.
Batch 1 without padding, greedy decoding, as the judge runs it.
"""
import json
import math
import os
from typing import NamedTuple, Tuple

import numpy as np

import mindspore
from mindspore import Tensor, ops as msops
from mindnlp.core import ops
from mindnlp.core.serialization import safe_load_file
from mindnlp.core.nn import functional as F


class DeepseekReference:
    """Weights of a deepseek checkpoint directory in `dtype`; `overrides` replace config.json fields
    that do not change weight shapes (num_experts_per_tok, norm_topk_prob)."""

    def __init__(self, path, dtype=mindspore.float32, **overrides):
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            self.config = dict(json.load(handle), **overrides)
        if self.config.get("hidden_act", "silu") != "silu":
            raise ValueError("the reference implements silu only")
        self.dtype = dtype
        # read by the loader from_pretrained uses (where the backend lacks bf16 it reads bf16 as fp16),
        # then cast to `dtype` as from_pretrained casts
        self.weights = {name: tensor.to(dtype) for name, tensor in
                        safe_load_file(os.path.join(path, "model.safetensors")).items()}

    def w(self, name):
        return self.weights[name]

    def rms_norm(self, name, x):
        dtype = x.dtype
        x = x.to(mindspore.float32)
        variance = x.pow(2).mean(-1, keep_dims=True)
        x = x * ops.rsqrt(variance + self.config["rms_norm_eps"])
        return self.w(name) * x.to(dtype)

    def mlp(self, prefix, x):
        gate = F.linear(x, self.w(f"{prefix}.gate_proj.weight"))
        up = F.linear(x, self.w(f"{prefix}.up_proj.weight"))
        return F.linear(F.silu(gate) * up, self.w(f"{prefix}.down_proj.weight"))

    def rope(self, kv_len, position_ids):
        head_dim = self.config["hidden_size"] // self.config["num_attention_heads"]
        inv_freq = 1.0 / (self.config["rope_theta"] ** (ops.arange(0, head_dim, 2).float() / head_dim))
        angles = ops.outer(ops.arange(kv_len, dtype=mindspore.float32), inv_freq)
        emb = ops.cat((angles, angles), dim=-1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        return cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)

    @staticmethod
    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        rotated = ops.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x * cos) + (rotated * sin)

    def attention(self, prefix, x, rope, mask, past):
        batch, steps, hidden = x.shape
        heads = self.config["num_attention_heads"]
        kv_heads = self.config["num_key_value_heads"]
        head_dim = hidden // heads

        def project(name, count):
            y = F.linear(x, self.w(f"{prefix}.{name}.weight"))
            return ops.transpose(y.view(batch, steps, count, head_dim), 1, 2)

        q, k, v = project("q_proj", heads), project("k_proj", kv_heads), project("v_proj", kv_heads)
        cos, sin = rope
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        if past is not None:
            k, v = ops.cat([past[0], k], dim=-2), ops.cat([past[1], v], dim=-2)
        present = (k, v)
        groups = heads // kv_heads
        if groups > 1:  # stock's repeat_kv
            k = k[:, :, None].broadcast_to((batch, kv_heads, groups) + k.shape[2:]).reshape(batch, heads, -1, head_dim)
            v = v[:, :, None].broadcast_to((batch, kv_heads, groups) + v.shape[2:]).reshape(batch, heads, -1, head_dim)
        scores = ops.matmul(q, ops.transpose(k, 2, 3)) / math.sqrt(head_dim)
        scores = scores + mask
        probs = F.softmax(scores, dim=-1, dtype=mindspore.float32).to(q.dtype)
        out = ops.transpose(ops.matmul(probs, v), 1, 2).reshape(batch, steps, hidden)
        return F.linear(out, self.w(f"{prefix}.o_proj.weight")), present

    def moe(self, prefix, x):
        config = self.config
        top_k = config["num_experts_per_tok"]
        shape = x.shape
        tokens = x.view(-1, shape[-1])
        scores = ops.softmax(F.linear(tokens, self.w(f"{prefix}.gate.weight")), dim=-1)
        weights, experts = ops.topk(scores, k=top_k, dim=-1, sorted=False)
        if top_k > 1 and config["norm_topk_prob"]:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        flat_experts, flat_weights = experts.view(-1), weights.view(-1, 1)
        total = ops.zeros_like(tokens)
        order = flat_experts.argsort()
        ends = np.cumsum(np.bincount(flat_experts.asnumpy()))
        token_of = order // top_k
        for expert, end in enumerate(ends):
            start = 0 if expert == 0 else ends[expert - 1]
            if start == end:
                continue
            rows = token_of[int(start):int(end)]
            out = self.mlp(f"{prefix}.experts.{expert}", tokens[rows])
            out = out.mul(flat_weights[order[int(start):int(end)]])
            total = msops.tensor_scatter_elements(total, rows.view(-1, 1).tile((1, shape[-1])), out, axis=0,
                                                  reduction="add")
        total = total.view(*shape)
        if config.get("n_shared_experts"):
            total = total + self.mlp(f"{prefix}.shared_experts", x)
        return total

    def is_sparse(self, layer):
        config = self.config
        return (config.get("n_routed_experts") is not None and layer >= config["first_k_dense_replace"]
                and layer % config["moe_layer_freq"] == 0)

    def forward(self, ids, cache):
        """Logits fp32 [1, S, V] for ids [1, S] after the positions in `cache` (a list of (k, v) per
        layer, empty at prefill), which grows in place."""
        steps = ids.shape[1]
        past_len = cache[0][0].shape[2] if cache else 0
        kv_len = past_len + steps
        positions = Tensor(np.arange(past_len, kv_len, dtype=np.int64)[None])
        mask = np.zeros((1, 1, steps, kv_len), dtype=mindspore.dtype_to_nptype(self.dtype))
        mask[..., np.triu(np.ones((steps, kv_len), dtype=bool), k=past_len + 1)] = np.finfo(mask.dtype).min
        mask = Tensor(mask)
        rope = self.rope(kv_len, positions)
        hidden = F.embedding(ids, self.w("model.embed_tokens.weight"))
        for layer in range(self.config["num_hidden_layers"]):
            prefix = f"model.layers.{layer}"
            normed = self.rms_norm(f"{prefix}.input_layernorm.weight", hidden)
            attended, present = self.attention(f"{prefix}.self_attn", normed, rope, mask,
                                               cache[layer] if len(cache) > layer else None)
            cache[layer:layer + 1] = [present]
            hidden = hidden + attended
            normed = self.rms_norm(f"{prefix}.post_attention_layernorm.weight", hidden)
            feed_forward = self.moe(f"{prefix}.mlp", normed) if self.is_sparse(layer) else \
                self.mlp(f"{prefix}.mlp", normed)
            hidden = hidden + feed_forward
        hidden = self.rms_norm("model.norm.weight", hidden)
        return F.linear(hidden, self.w("lm_head.weight")).float()

    def generate(self, ids, max_new_tokens):
        """Greedy decoding of prompt `ids` [1, S] as stock's generate returns it with
        return_dict_in_generate and output_logits: `.sequences` [1, S + n] (stopping after an
        eos_token_id) and `.logits`, a tuple of fp32 [1, V] per step."""
        ids = ids.asnumpy() if isinstance(ids, Tensor) else np.asarray(ids)
        cache, sequence, logits = [], ids.astype(np.int64).reshape(-1).tolist(), []
        step_ids = Tensor(np.asarray([sequence], dtype=np.int64))
        for _ in range(max_new_tokens):
            last = self.forward(step_ids, cache)[:, -1, :]
            logits.append(last)
            token = int(ops.argmax(last, dim=-1).asnumpy()[0])
            sequence.append(token)
            if token == self.config.get("eos_token_id"):
                break
            step_ids = Tensor(np.array([[token]], dtype=np.int64))
        return Generated(Tensor(np.asarray([sequence], dtype=np.int64)), tuple(logits))


class Generated(NamedTuple):
    """The two fields of stock's generate output the tests compare."""
    sequences: Tensor
    logits: Tuple[Tensor, ...]
