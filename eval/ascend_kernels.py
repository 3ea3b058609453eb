"""Stand-ins for the fused Ascend kernels mindnlp.accel calls, for running its Ascend branches on the CPU.

Each stand-in takes the kernel's own arguments and, before computing anything:
  1. binds them to the installed MindSpore function's signature (names, positional order, keyword-only
     arguments): a call the real function would reject with a TypeError is rejected here;
  2. runs the real function, so that MindSpore's Python front end validates what it validates before
     selecting a kernel (argument types, enum strings such as input_layout, value rules such as
     GroupedMatmulV4's split_item); only its "no kernel on this backend" error is accepted;
  3. checks the constraints the MindSpore 2.6 documentation (the function's docstring in the installed
     package, quoted in each rule) states for it: dtypes, layouts, shapes, head counts, mask meaning.
A call that breaks a rule raises KernelCallError naming the kernel and the rule; so does an argument a
stand-in does not model (it must keep its default). Then the stand-in returns what the kernel computes,
by portable CPU ops: the kernel's own formula (attention: scale multiplied, softmax in fp32, mask
True = discard; rms_norm: fp32, rounded once), which is not the eager twin's arithmetic, so
device.choose's self-check sees a difference where the real kernel has one. The rotary stand-in is the
exception: it computes stock's formula in x's dtype, so it always matches the composite bit for bit;
whether the device's kernel does is what its self-check there decides. incre_flash_attention's
docstring does not say what a True mask element means; flash_attention_score's (1 = discard) is assumed.
"""
import inspect
from typing import Callable, Dict, NamedTuple, Tuple

import numpy as np
import mindspore
from mindspore import ops

FP16_BF16 = (mindspore.float16, mindspore.bfloat16)
FLOATS = (mindspore.float16, mindspore.bfloat16, mindspore.float32)
MASK_DTYPES = (mindspore.bool_, mindspore.uint8)

# The front end's errors that only mean "this backend has no such kernel".
_NO_KERNEL = ("Not found op", "unregistered", "not supported on CPU", "is not supported in CPU")


class KernelCallError(AssertionError):
    """A fused kernel called against its signature, MindSpore's front end or a documented rule."""

    def __init__(self, kernel: str, rule: str):
        super().__init__(f"{kernel}: {rule}")
        self.kernel, self.rule = kernel, rule


class Kernel(NamedTuple):
    """A fused kernel: where mindnlp.accel looks it up, and its stand-in."""
    module: str  # the MindSpore module whose attribute is called
    name: str
    check: Callable  # (bound arguments) -> None, raising KernelCallError
    compute: Callable  # (bound arguments) -> the kernel's outputs
    unmodelled: Tuple[str, ...] = ()  # arguments compute ignores: they must keep their defaults


def _require(kernel, condition, rule):
    if not condition:
        raise KernelCallError(kernel, rule)


def defaults_only(kernel: str, real: Callable, arguments, names) -> None:
    """The arguments `names` keep the real function's defaults: the stand-in does not model them."""
    parameters = inspect.signature(real).parameters
    changed = [name for name in names if not _is_default(arguments[name], parameters[name].default)]
    _require(kernel, not changed, f"{', '.join(changed)}: not modelled by this stand-in (keep the defaults)")


def _is_default(value, default):
    if value is None or default is None:
        return value is default
    return isinstance(value, (int, float, str)) and value == default


def bind(kernel: str, real: Callable, args, kwargs) -> Dict[str, object]:
    """The call's arguments by name, defaults applied, as the real function would bind them."""
    try:
        bound = inspect.signature(real).bind(*args, **kwargs)
    except TypeError as error:
        raise KernelCallError(kernel, f"signature of the installed MindSpore function: {error}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def front_end_check(kernel: str, real: Callable, args, kwargs) -> None:
    """Run the real function: its front end validates types and enums, then finds no CPU kernel."""
    try:
        out = real(*args, **kwargs)
        first = out[0] if isinstance(out, (tuple, list)) else out
        first.asnumpy()  # a call that did run here (a backend that has the kernel) is fine too
    except Exception as error:  # noqa: BLE001 - every error but "no kernel here" is the caller's
        message = str(error)
        if not any(marker in message for marker in _NO_KERNEL):
            raise KernelCallError(kernel, f"MindSpore's front end: {type(error).__name__}: "
                                          f"{message.splitlines()[0]}") from None


# ---------------------------------------------------------------- rms_norm

def _check_rms_norm(a):
    k, x, gamma, eps = "rms_norm", a["x"], a["gamma"], a["epsilon"]
    _require(k, x.dtype in FLOATS, f"x dtype {x.dtype}: 'Support data type: float16, float32, bfloat16'")
    _require(k, gamma.dtype == x.dtype, f"gamma dtype {gamma.dtype} is not x's {x.dtype} "
                                        "('If data type of x is not the same with the data type of gamma')")
    _require(k, tuple(gamma.shape) == tuple(x.shape[x.ndim - gamma.ndim:]),
             f"gamma {tuple(gamma.shape)} is not the trailing shape of x {tuple(x.shape)}")
    _require(k, isinstance(eps, float) and 0 < eps <= 1, f"epsilon {eps!r}: 'A float number ranged in (0, 1]'")


def _rms_norm(a):
    x, gamma, eps = a["x"], a["gamma"], a["epsilon"]
    axes = tuple(range(x.ndim - gamma.ndim, x.ndim))
    x32 = x.astype(mindspore.float32)
    rstd = ops.rsqrt(ops.mean(x32 * x32, axes, keep_dims=True) + eps)
    # the kernel normalises and scales in fp32 and rounds once
    return (x32 * rstd * gamma.astype(mindspore.float32)).astype(x.dtype), rstd


# ---------------------------------------------------------------- rotary_position_embedding

# mode 0 (rotate_half): the cos/sin shapes allowed for each x layout, as the docstring lists them.
_ROTARY_COS_LAYOUTS = {"BNSD": ("11SD", "B1SD", "BNSD"), "BSND": ("1S1D", "BS1D", "BSND"),
                       "SBND": ("S11D", "SB1D", "SBND")}


def rotary_layouts(x_shape, cos_shape):
    """The x layouts (BNSD, BSND, SBND) under which cos_shape is one the docstring allows for mode 0."""
    fits = []
    for layout, cos_layouts in _ROTARY_COS_LAYOUTS.items():
        size = dict(zip(layout, x_shape))
        for cos_layout in cos_layouts:
            want = tuple(1 if axis == "1" else size[axis] for axis in cos_layout)
            if want == tuple(cos_shape):
                fits.append(layout)
                break
    return fits


def _check_rotary(a):
    k, x, cos, sin, mode = "rotary_position_embedding", a["x"], a["cos"], a["sin"], a["mode"]
    _require(k, x.ndim == 4 and x.dtype in FLOATS, f"x {tuple(x.shape)} {x.dtype}: "
                                                  "'4D tensor, with float16, bfloat16 or float32 data type'")
    _require(k, cos.dtype == x.dtype and sin.dtype == x.dtype, "cos and sin must have x's dtype ('has the same "
                                                              "type as x')")
    _require(k, tuple(sin.shape) == tuple(cos.shape), "sin must have cos's shape ('Same with cos')")
    _require(k, mode == 0, f"mode {mode!r}: only 0 (rotate_half) is computed by this stand-in")
    dim = x.shape[-1]
    _require(k, dim % 2 == 0 and dim < 896, f"D = {dim}: 'D < 896 and D is Even'")
    layouts = rotary_layouts(x.shape, cos.shape)
    _require(k, layouts, f"cos {tuple(cos.shape)} fits no documented layout of x {tuple(x.shape)} "
                         "(BNSD: 11SD/B1SD/BNSD, BSND: 1S1D/BS1D/BSND, SBND: S11D/SB1D/SBND)")
    allowed = []
    for layout in layouts:
        size = dict(zip(layout, x.shape))
        if size["B"] >= 1000 or size["N"] >= 1000:
            continue
        aligned = (dim * x.itemsize) % 32 == 0
        if layout == "BNSD" and aligned and size["B"] * size["N"] > 8 * size["S"]:
            continue  # 'When the layout is BNSD, B * N > 8S and D is 32-byte alignment ... cannot be called'
        allowed.append(layout)
    _require(k, allowed, f"x {tuple(x.shape)} with cos {tuple(cos.shape)} reads only as {'/'.join(layouts)}, which "
                         "the docstring forbids here (B, N < 1000; no BNSD with B*N > 8S and D 32-byte aligned)")


def _rotary(a):
    x, cos, sin = a["x"], a["cos"], a["sin"]
    first, second = ops.split(x, x.shape[-1] // 2, -1)
    return x * cos + ops.cat((-second, first), -1) * sin


# ---------------------------------------------------------------- attention

def _repeat_heads(x, heads):
    kv_heads = x.shape[1]
    return x if kv_heads == heads else ops.repeat_interleave(x, heads // kv_heads, 1)


def _attention(q, k, v, discard, scale):
    """softmax(scale * q @ k^T, discarding where `discard` is True) @ v, BNSD, in fp32, cast to q's dtype."""
    heads = q.shape[1]
    k, v = _repeat_heads(k, heads), _repeat_heads(v, heads)
    scores = ops.matmul(q.astype(mindspore.float32), k.astype(mindspore.float32).swapaxes(2, 3)) * scale
    if discard is not None:
        # the most negative fp32, not -inf: a query that sees no key (left padding) gets finite values
        scores = ops.masked_fill(scores, discard.astype(mindspore.bool_), float(np.finfo(np.float32).min))
    probs = ops.softmax(scores, -1)
    return ops.matmul(probs, v.astype(mindspore.float32)).astype(q.dtype)


def _check_flash_attention(a):
    k, q, key, value, mask = "flash_attention_score", a["query"], a["key"], a["value"], a["attn_mask"]
    _require(k, a["input_layout"] == "BNSD", f"input_layout {a['input_layout']!r}: this stand-in computes BNSD")
    _require(k, q.dtype in FP16_BF16, f"query dtype {q.dtype}: 'The supported data types are float16 and bfloat16'")
    _require(k, key.dtype == q.dtype and value.dtype == q.dtype, "key and value must have query's dtype")
    _require(k, q.ndim == 4 and key.ndim == 4 and tuple(value.shape) == tuple(key.shape),
             f"BNSD query (B, N1, S1, D), key = value (B, N2, S2, D); got {tuple(q.shape)}, {tuple(key.shape)}, "
             f"{tuple(value.shape)}")
    batch, heads, steps, dim = q.shape
    _require(k, key.shape[0] == batch and key.shape[3] == dim, "key's B and D must be query's")
    _require(k, a["head_num"] == heads, f"head_num {a['head_num']} is not query's N1 = {heads}")
    _require(k, heads % key.shape[1] == 0, f"N2 = {key.shape[1]} must be a factor of N1 = {heads}")
    _require(k, dim % 16 == 0 and dim <= 512, f"D = {dim}: 'a multiple of 16, with the max value of 512'")
    _require(k, 1 <= heads <= 256 and 1 <= batch <= 2048, "'N1: Value range 1 to 256', 'B: Value range 1 to 2k'")
    if mask is not None:
        length = key.shape[2]
        _require(k, mask.dtype in MASK_DTYPES, f"attn_mask dtype {mask.dtype}: 'tensor of bool or uint8'")
        allowed = ((batch, heads, steps, length), (batch, 1, steps, length), (steps, length))
        _require(k, tuple(mask.shape) in allowed, f"attn_mask {tuple(mask.shape)}: with sparse_mode 0 it must be "
                                                  f"(B, N1, S1, S2), (B, 1, S1, S2) or (S1, S2) = {allowed}")
    _require(k, a["sparse_mode"] == 0, f"sparse_mode {a['sparse_mode']}: this stand-in computes 0 (the mask given)")


def _flash_attention(a):
    out = _attention(a["query"], a["key"], a["value"], a["attn_mask"], a["scalar_value"])
    # the kernel returns (softmax_max, softmax_sum, softmax_out, attention_out); mindspore.ops returns the last
    return out


def _check_incre_flash_attention(a):
    k, q, keys, values, mask = "incre_flash_attention", a["query"], a["key"], a["value"], a["attn_mask"]
    _require(k, a["input_layout"] == "BNSD", f"input_layout {a['input_layout']!r}: this stand-in computes BNSD")
    _require(k, q.dtype in FP16_BF16, f"query dtype {q.dtype}: 'with data type of float16 or bfloat16'")
    _require(k, isinstance(keys, (list, tuple)) and isinstance(values, (list, tuple)) and len(keys) == len(values) == 1,
             "key and value: 'Union[tuple, list]' of one tensor each")
    key, value = keys[0], values[0]
    _require(k, tuple(key.shape) == tuple(value.shape), "'The shapes of the tensors corresponding to key and value "
                                                        "need to be completely consistent'")
    _require(k, key.dtype == q.dtype and value.dtype == q.dtype, "key and value must have query's dtype")
    _require(k, q.ndim == 4 and q.shape[2] == 1, f"query {tuple(q.shape)}: BNSD shape is (B, N, 1, D)")
    batch, heads, _, dim = q.shape
    _require(k, a["num_heads"] == heads, f"num_heads {a['num_heads']} is not query's N = {heads}")
    kv_heads = a["num_key_value_heads"] or heads
    _require(k, heads % kv_heads == 0, "'num_heads must be a multiple of num_key_value_heads'")
    _require(k, key.ndim == 4 and tuple(key.shape[:2]) == (batch, kv_heads) and key.shape[3] == dim,
             f"key {tuple(key.shape)}: BNSD shape is (B, kvN, S, D) = ({batch}, {kv_heads}, S, {dim})")
    if mask is not None:
        length = key.shape[2]
        _require(k, mask.dtype in (mindspore.bool_, mindspore.int8, mindspore.uint8),
                 f"attn_mask dtype {mask.dtype}: 'with data type of bool or int8 or uint8'")
        allowed = ((batch, length), (batch, 1, length), (batch, 1, 1, length))
        _require(k, tuple(mask.shape) in allowed, f"attn_mask {tuple(mask.shape)}: 'The shape is (B, S) / (B, 1, S) / "
                                                  f"(B, 1, 1, S)' = {allowed}")


def _incre_flash_attention(a):
    mask = a["attn_mask"]
    if mask is not None:
        mask = mask.reshape(mask.shape[0], 1, 1, mask.shape[-1])
    return _attention(a["query"], a["key"][0], a["value"][0], mask, a["scale_value"])


# ---------------------------------------------------------------- grouped_matmul_v4

def _check_grouped_matmul(a):
    k, xs, weights, groups = "grouped_matmul_v4", a["x"], a["weight"], a["group_list"]
    _require(k, a["split_item"] == 3 and a["group_type"] == 0 and a["group_list_type"] == 1,
             "this stand-in computes split_item 3, group_type 0, group_list_type 1 (group sizes)")
    _require(k, isinstance(xs, (list, tuple)) and len(xs) == 1 and xs[0].ndim == 2,
             "'The length of x is 1, tensor in x must be 2D'")
    _require(k, isinstance(weights, (list, tuple)) and len(weights) == 1 and weights[0].ndim == 3,
             "'The length of weight is 1, tensor in weight must be 3D'")
    x, weight = xs[0], weights[0]
    # Its "Parameter limitations 2" table lists float16 and bfloat16 x and weight (float32 too in this
    # split_item 3 / group_type 0 mode), with an output of the same dtype.
    _require(k, x.dtype in FLOATS and weight.dtype == x.dtype, f"x {x.dtype} and weight {weight.dtype}: one float dtype")
    _require(k, x.shape[1] == weight.shape[1], f"x (M, K) {tuple(x.shape)} against weight (E, K, N) {tuple(weight.shape)}")
    _require(k, groups is not None and groups.dtype == mindspore.int64 and groups.ndim == 1,
             "group_list: 'Supported dtypes: Int64', a 1D Tensor")
    _require(k, groups.shape[0] == weight.shape[0], "'(group_list.shape)[0] must be equal to (weight.shape)[0]'")
    counts = groups.asnumpy()
    # The docstring says the numbers must be positive; an expert no token chose has a zero count in every
    # MoE prefill, so zeros are admitted and the self-check's inputs include one (the device decides).
    _require(k, (counts >= 0).all(), f"group sizes {counts.tolist()} must not be negative")
    _require(k, counts.sum() <= x.shape[0], f"group sizes sum to {counts.sum()} > {x.shape[0]} rows ('can be less "
                                            "equal than length of x')")


def _grouped_matmul(a):
    x, weight, counts = a["x"][0], a["weight"][0], a["group_list"].asnumpy()
    row_experts = mindspore.Tensor(sum(([e] * int(c) for e, c in enumerate(counts)), []) or [0], mindspore.int32)
    rows = int(counts.sum())
    out = ops.bmm(x[:rows, None, :], ops.gather(weight, row_experts[:rows], 0))[:, 0]
    if rows < x.shape[0]:
        out = ops.cat((out, ops.zeros((x.shape[0] - rows, weight.shape[2]), x.dtype)), 0)
    return [out]


KERNELS = (
    Kernel("mindspore.ops", "rms_norm", _check_rms_norm, _rms_norm),
    Kernel("mindspore.ops", "rotary_position_embedding", _check_rotary, _rotary),
    Kernel("mindspore.ops", "flash_attention_score", _check_flash_attention, _flash_attention,
           ("real_shift", "drop_mask", "padding_mask", "prefix", "actual_seq_qlen", "actual_seq_kvlen", "keep_prob",
            "pre_tokens", "next_tokens")),
    Kernel("mindspore.ops", "incre_flash_attention", _check_incre_flash_attention, _incre_flash_attention,
           ("actual_seq_lengths", "pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2",
            "quant_offset2", "antiquant_scale", "antiquant_offset", "block_table", "block_size", "kv_padding_size")),
    Kernel("mindspore.ops.auto_generate", "grouped_matmul_v4", _check_grouped_matmul, _grouped_matmul,
           ("bias", "scale", "offset", "antiquant_scale", "antiquant_offset", "pre_token_scale", "activation_input",
            "activation_quant_scale", "activation_quant_offset", "act_type")),
)
