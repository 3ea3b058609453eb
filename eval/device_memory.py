"""Predict the device memory the judge reads (max_memory_reserved) for each real model, stock and ours.
A prediction from the models' shapes and the judge's workload, not a measurement (no device here).

    reserved = the whole GiB at or above weights + KV cache + the largest transient of a call

The judge never resets the peak, so its warm-up (where ours compiles its graphs) counts too; and its
pool grows in whole GiB, so memory moves the score in GiB steps (CONTEST.md): the prediction is
given in GiB and in the judge's GB (10^9 bytes). Terms, bf16 unless said:
* weights: every parameter (costmodel.RealModel.total_params);
* KV cache: stock's DynamicCache holds the longest prompt and its new tokens, and concatenates one
  step onto a copy, so twice that at its peak; ours is static, of the length its first allocation
  gets (the model's largest prefill bucket and the decode reserve, rounded up to the cache step);
* transients, the largest one alive at a time:
  - a vision tower's attention: stock [heads, S, S] scores, their fp32 softmax and the probabilities
    (and Qwen2-VL's [S, S] mask); ours the same over at most a query chunk's budget (Qwen2-VL; plus
    its bucket's [S, S] mask), Janus's 576 patches unchunked;
  - the language model's attention over the prompt: the same per layer, one layer at a time; ours
    over the prompt's bucket (the largest bucket, for the warm-up's compiles);
  - the LM head: stock's Qwen2-VL over every prompt position, in bf16 and again as fp32 (.float());
    the others and ours one row;
  - the MoE: ours' dense twin runs every expert over the prompt's bucket (E x tokens x (2I + I + H)),
    the MoE models' buckets ending at OURS_MOE_LARGEST_BUCKET;
    stock loops over the experts with only their tokens.
Left out: activations of a few rows per layer, workspaces, and what a compiled graph may keep (on
this CPU each graph keeps its broadcasting kernels' workspaces; on a device that is not known).
"""
import dataclasses
import math

from costmodel import BF16_BYTES, real_model

GIB = 1 << 30
FP32 = 4
# generation.prefill_graph.BUCKETS, layers.moe.PREFILL_BUCKET_LIMIT and generation.loop
# (tests/test_device_memory.py checks them)
OURS_LARGEST_BUCKET = 1024
OURS_MOE_LARGEST_BUCKET = 256
OURS_DECODE_RESERVE = 256
OURS_CACHE_STEP = 256
# layers.vision.SCORES_BUDGET_BYTES
OURS_SCORES_BUDGET = 256 << 20


@dataclasses.dataclass(frozen=True)
class Workload:
    """The judge's largest call for a model: its longest prompt, the image patches (0 for text), the
    tower's heads, and the new tokens."""

    prompt: int
    patches: int = 0
    tower_heads: int = 0
    new_tokens: int = 50
    all_position_logits: bool = False  # stock's LM head over every prompt position


# Prompt lengths and grids as the judge's tokenizers and processors make them (CONTEST.md, issue notes).
WORKLOADS = {
    "Qwen/Qwen1.5-MoE-A2.7B-Chat": Workload(prompt=160),
    "deepseek-ai/deepseek-moe-16b-chat": Workload(prompt=160),
    "Qwen/Qwen2-VL-2B-Instruct": Workload(prompt=1023, patches=3996, tower_heads=16, all_position_logits=True),
    "deepseek-ai/Janus-Pro-7B": Workload(prompt=640, patches=576, tower_heads=16),
}


def ours_cache_length(largest_bucket: int) -> int:
    """Positions of ours' first static cache: the largest bucket and the decode reserve, rounded up."""
    return -(-(largest_bucket + OURS_DECODE_RESERVE) // OURS_CACHE_STEP) * OURS_CACHE_STEP


def attention_bytes(heads: int, queries: int, keys: int, mask: bool = False) -> int:
    """Scores and probabilities in bf16 and the fp32 softmax between them, and an optional bf16 mask."""
    return heads * queries * keys * (2 * BF16_BYTES + FP32) + (queries * keys * BF16_BYTES if mask else 0)


def predict(name: str, variant: str) -> dict:
    """{'weights', 'cache', 'transient', 'transient_what', 'total'} in bytes and 'gib' (whole GiB
    reserved) for the real model `name` (or a family) run by `variant` ("stock" or "ours")."""
    model = real_model(name)
    work = WORKLOADS[model.name]
    head_dim = model.hidden // model.heads
    per_position = model.layers * 2 * model.kv_heads * head_dim * BF16_BYTES
    if variant == "stock":
        cache = 2 * per_position * (work.prompt + work.new_tokens)
        lm_tokens = work.prompt
    elif variant == "ours":
        lm_tokens = OURS_MOE_LARGEST_BUCKET if model.experts else OURS_LARGEST_BUCKET
        cache = per_position * ours_cache_length(lm_tokens)
    else:
        raise ValueError(f"variant must be 'stock' or 'ours', got {variant!r}")
    transients = {"language model attention": attention_bytes(model.heads, lm_tokens, lm_tokens)}
    if work.patches:
        mask = model.name.startswith("Qwen/Qwen2-VL")
        whole = attention_bytes(work.tower_heads, work.patches, work.patches, mask)
        if variant == "ours" and mask:
            rows = max(2, OURS_SCORES_BUDGET // (work.tower_heads * work.patches * (2 * BF16_BYTES + FP32)))
            whole = attention_bytes(work.tower_heads, rows, work.patches) + work.patches ** 2 * BF16_BYTES
        transients["vision tower attention"] = whole
    if work.all_position_logits and variant == "stock":
        transients["LM head over the prompt"] = model.vocab * work.prompt * (BF16_BYTES + FP32)
    if model.experts and variant == "ours":
        width = 2 * model.expert_intermediate + model.expert_intermediate + model.hidden
        transients["MoE dense twin"] = model.experts * lm_tokens * width * BF16_BYTES
    what, transient = max(transients.items(), key=lambda item: item[1])
    weights = BF16_BYTES * model.total_params
    total = weights + cache + transient
    return {"weights": weights, "cache": cache, "transient": transient, "transient_what": what, "total": total,
            "gib": math.ceil(total / GIB)}


def describe(names) -> list:
    """Markdown lines: the prediction per model, stock against ours, with the GiB step each lands on."""
    lines = ["Device memory (prediction, eval/device_memory.py: weights + KV cache + the largest transient, "
             "rounded up to the pool's whole GiB; not measured on a device):", "",
             "| model | variant | weights GB | KV cache GB | largest transient | reserved GiB (GB) |",
             "|---|---|---|---|---|---|"]
    for name in names:
        for variant in ("stock", "ours"):
            p = predict(name, variant)
            lines.append(f"| {real_model(name).name} | {variant} | {p['weights'] / 1e9:.2f} | {p['cache'] / 1e9:.3f} | "
                         f"{p['transient_what']} {p['transient'] / 1e9:.3f} GB | {p['gib']} ({p['gib'] * GIB / 1e9:.2f}) |")
    return lines
