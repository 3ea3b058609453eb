"""Hugging Face checkpoint tensors into our stacked and fused layouts, one slice at a time.

A checkpoint stores every expert's projections as separate Linear weights
(`mlp.experts.{j}.gate_proj.weight`, [out, in]). Our layers hold them stacked and
transposed once, in the layout the matmuls read (`gate_up_weight` [E, in, 2*out]).
Attention's q/k/v projections, and a dense MLP's gate/up projections, are fused the other
way: their [out, in] weights stacked as row blocks of one Linear (`qkv_proj.weight`,
`gate_up_proj.weight`), untransposed, as F.linear reads them.
Each checkpoint tensor is copied into its slice of the preallocated parameter as it
arrives and then dropped, so a load never holds a second copy of the weights.
A module built this way subclasses `SlotLoadedModule` and lists its `checkpoint_slots`;
a PreTrainedModel that contains such modules adds `StackedCheckpointMixin`, which makes
any missing weight an error, lets stock report checkpoint tensors nothing uses, and saves
in Hugging Face names again.
"""
import functools
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import mindspore

from mindnlp.core import nn

_EXPERT_FIELD = "{expert}"


@dataclass(frozen=True)
class CheckpointSlot:
    """Where one checkpoint tensor goes.

    name: the checkpoint name relative to the module; `{expert}` stands for the expert index
        in stacked modules.
    param: our parameter that receives it (a dotted path for a submodule's parameter),
        transposed ([out, in] -> [in, out]) unless `rows` is given.
    block, blocks: it fills column block `block` of `blocks` equal blocks of the last axis
        (stacked experts' gate and up share one parameter, gate first, as the fused matmul
        splits it).
    rows: (start, stop): it fills these rows of the first axis as it is, untransposed
        (q, k and v of unequal sizes stacked in one [out, in] weight or [out] bias; a dense
        MLP's gate and up).
    """

    name: str
    param: str
    block: int = 0
    blocks: int = 1
    rows: Optional[Tuple[int, int]] = None

    @property
    def transposed(self) -> bool:
        return self.rows is None

    @property
    def pattern(self) -> "re.Pattern":
        head, _, tail = self.name.partition(_EXPERT_FIELD)
        if not _:
            return re.compile(re.escape(self.name))
        return re.compile(re.escape(head) + r"(?P<expert>\d+)" + re.escape(tail))

    def key(self, expert: Optional[int]) -> str:
        return self.name.format(expert=expert) if expert is not None else self.name


# Stacked experts: gate and up transposed into column blocks of one [E, in, 2*out] parameter.
EXPERT_SLOTS = (
    CheckpointSlot(_EXPERT_FIELD + ".gate_proj.weight", "gate_up_weight", block=0, blocks=2),
    CheckpointSlot(_EXPERT_FIELD + ".up_proj.weight", "gate_up_weight", block=1, blocks=2),
    CheckpointSlot(_EXPERT_FIELD + ".down_proj.weight", "down_weight"),
)
GATE_UP_PARAM = "gate_up_proj.weight"
INPUT_PROJ_PARAM = "input_proj.weight"


def row_slots(blocks: Sequence[Tuple[str, int]], param: str) -> Tuple[CheckpointSlot, ...]:
    """Slots of checkpoint tensors (name, rows) stacked in that order as row blocks of `param`."""
    slots, start = [], 0
    for name, rows in blocks:
        slots.append(CheckpointSlot(name, param, rows=(start, start + rows)))
        start += rows
    return tuple(slots)


def qkv_slots(q_rows: int, kv_rows: int, bias: bool) -> Tuple[CheckpointSlot, ...]:
    """Slots of q_proj, k_proj, v_proj stacked in that order as row blocks of `qkv_proj`."""
    kinds = ("weight", "bias") if bias else ("weight",)
    return tuple(slot for kind in kinds
                 for slot in row_slots(((f"q_proj.{kind}", q_rows), (f"k_proj.{kind}", kv_rows),
                                        (f"v_proj.{kind}", kv_rows)), f"qkv_proj.{kind}"))


def gate_up_slots(rows: int) -> Tuple[CheckpointSlot, ...]:
    """Slots of gate_proj and up_proj ([rows, in] each) stacked in that order as row blocks of
    `gate_up_proj` (a dense MLP's down_proj is a plain Linear under its own name)."""
    return row_slots((("gate_proj.weight", rows), ("up_proj.weight", rows)), GATE_UP_PARAM)


class MissingCheckpointWeightsError(RuntimeError):
    """The checkpoint lacked tensors that the model's parameters need."""


class SlotLoadedModule(nn.Module):
    """A module whose parameters are assembled from several checkpoint tensors.

    Subclasses set `checkpoint_slots` and, when stacked over experts, `num_experts`.
    Loading accepts either the Hugging Face names of the slots or our own parameter
    names (a whole parameter, e.g. from `Module.state_dict()`).
    """

    checkpoint_slots: Tuple[CheckpointSlot, ...] = ()
    num_experts: Optional[int] = None

    def __init__(self):
        super().__init__()
        self._filled_slots = set()
        self._load_prefix = ""
        self.register_load_state_dict_post_hook(_report_unfilled_slots)

    def _expert_indices(self):
        return [None] if self.num_experts is None else range(self.num_experts)

    def _match_slot(self, name: str):
        for slot in self.checkpoint_slots:
            match = slot.pattern.fullmatch(name)
            if match is not None:
                expert = match.groupdict().get("expert")
                return slot, None if expert is None else int(expert)
        return None

    def _slot_target(self, slot: CheckpointSlot, expert: Optional[int]):
        """The parameter, the index into it that one checkpoint tensor fills, and that
        tensor's shape in the checkpoint ([out, in], or [out] for a bias)."""
        param = functools.reduce(getattr, slot.param.split("."), self)
        if slot.rows is not None:
            start, stop = slot.rows
            return param, slice(start, stop), (stop - start,) + tuple(param.shape[1:])
        width = param.shape[-1] // slot.blocks
        columns = slice(slot.block * width, (slot.block + 1) * width)
        index = (slice(None), columns) if expert is None else (expert, slice(None), columns)
        return param, index, (width, param.shape[-2])

    def _load_slot(self, key: str, slot: CheckpointSlot, expert: Optional[int], tensor) -> Optional[str]:
        """Copy one checkpoint tensor into its slice; return an error message or None."""
        if (expert is None) != (self.num_experts is None):
            return f"{key}: expert index does not fit {type(self).__name__}"
        if expert is not None and expert >= self.num_experts:
            return f"{key}: expert index {expert} out of range for {self.num_experts} experts"
        param, index, expected = self._slot_target(slot, expert)
        if tuple(tensor.shape) != expected:
            return (f"size mismatch for {key}: copying a param with shape {tuple(tensor.shape)} from "
                    f"checkpoint, the shape in current model is {expected}.")
        param[index] = (tensor.T if slot.transposed else tensor).to(param.dtype)
        self._filled_slots.add((slot, expert))
        # A layer that caches a derived copy of its weight (Linear's CPU transpose) must rebuild it:
        # the stock loader runs that layer's own load hook only when a key carries its name.
        owner = functools.reduce(getattr, slot.param.split(".")[:-1], self)
        if hasattr(owner, "invalidate"):
            owner.invalidate()
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        self._load_prefix = prefix
        for key in [k for k in state_dict if k.startswith(prefix)]:
            found = self._match_slot(key[len(prefix):])
            if found is None:
                continue
            # pop drops this dict's reference at once; the caller's shard dict is freed per shard
            error = self._load_slot(key, *found, state_dict.pop(key))
            if error is not None:
                error_msgs.append(error)
        # A slot's parameter missing under our own name is settled by the post hook, which runs
        # after submodules (whose parameters slots may fill) have reported their missing keys.
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        for slot in self.checkpoint_slots:
            if prefix + slot.param in state_dict:  # a whole parameter under our own name
                self._filled_slots.update((slot, e) for e in self._expert_indices())

    def unfilled_slot_keys(self, prefix: str = "") -> List[str]:
        """Checkpoint names (with `prefix`) of the slots not loaded yet."""
        return [prefix + slot.key(e) for slot in self.checkpoint_slots for e in self._expert_indices()
                if (slot, e) not in self._filled_slots]

    def checkpoint_tensors(self, prefix: str = "") -> Iterator[Tuple[str, mindspore.Tensor]]:
        """Our parameters cut back into Hugging Face checkpoint tensors ([out, in], contiguous)."""
        for slot in self.checkpoint_slots:
            for expert in self._expert_indices():
                param, index, _ = self._slot_target(slot, expert)
                value = param[index]
                yield prefix + slot.key(expert), (value.T if slot.transposed else value).contiguous()


def _report_unfilled_slots(module: SlotLoadedModule, incompatible_keys) -> None:
    """Replace the slot parameters' own names in the missing keys by the checkpoint names still unfilled."""
    prefix = module._load_prefix
    slot_params = {prefix + slot.param for slot in module.checkpoint_slots}
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if key not in slot_params]
    missing.extend(module.unfilled_slot_keys(prefix))


def _slot_modules(model: nn.Module) -> Dict[str, SlotLoadedModule]:
    """The slot-loaded modules of `model` by the prefix of their names ("" for `model` itself)."""
    return {f"{name}." if name else "": module for name, module in model.named_modules()
            if isinstance(module, SlotLoadedModule)}


def _slot_params(model: nn.Module) -> List[str]:
    """Names of `model`'s parameters that slots fill."""
    return [prefix + slot.param for prefix, module in _slot_modules(model).items()
            for slot in module.checkpoint_slots]


def unfilled_checkpoint_keys(model: nn.Module) -> List[str]:
    """Every checkpoint name that some slot-loaded module of `model` still waits for."""
    return [key for prefix, module in _slot_modules(model).items()
            for key in module.unfilled_slot_keys(prefix)]


def check_complete(model: nn.Module, missing_keys: Sequence[str] = ()) -> None:
    """Raise naming `missing_keys` (weights a load found missing) and every slot of `model` not loaded."""
    missing = list(missing_keys) + unfilled_checkpoint_keys(model)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise MissingCheckpointWeightsError(
            f"{type(model).__name__}: the checkpoint lacks {len(missing)} weight(s): {shown}")


def model_keys_of_checkpoint(model: nn.Module, checkpoint_keys: Sequence[str]) -> List[str]:
    """`checkpoint_keys` in `model`'s own names, each once: a name that a slot of `model` consumes
    becomes the name of the parameter that slot fills; any other name stays as it is."""
    modules = _slot_modules(model)
    names = {}
    for key in checkpoint_keys:
        parts = key.split(".")
        for depth in range(len(parts)):
            prefix = ".".join(parts[:depth]) + "." if depth else ""
            found = modules[prefix]._match_slot(key[len(prefix):]) if prefix in modules else None
            if found is not None:
                key = prefix + found[0].param
                break
        names[key] = None
    return list(names)


def hf_state_dict(model: nn.Module) -> Dict[str, mindspore.Tensor]:
    """`model.state_dict()` in Hugging Face names: slot-loaded parameters cut back per tensor.

    The cut tensors are copies, so a save holds the expert weights twice; loads never do.
    """
    slot_params = set(_slot_params(model))
    state = {key: tensor for key, tensor in model.state_dict().items() if key not in slot_params}
    for prefix, module in _slot_modules(model).items():
        state.update(module.checkpoint_tensors(prefix))
    return state


class StackedCheckpointMixin:
    """For a PreTrainedModel built from slot-loaded layers (put it before the model base class).

    Stock loading compares checkpoint names with `state_dict()` names and only warns about the
    differences. It is given the checkpoint's names as `model_keys_of_checkpoint` translates
    them, so its unexpected keys (and its warning about them) are the tensors that neither a
    parameter nor a slot consumes; what it finds missing, together with every slot left
    unfilled, raises MissingCheckpointWeightsError (stock's own rules keep tied weights and
    non-persistent buffers out of that list).
    """

    @classmethod
    def _load_pretrained_model(cls, model, state_dict, loaded_keys, *args, **kwargs):
        return load_with_slots(super()._load_pretrained_model, cls, model, state_dict, loaded_keys, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        if state_dict is None:
            state_dict = hf_state_dict(self)
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)


def load_with_slots(stock_load, cls, model, state_dict, loaded_keys, *args, all_required=True, **kwargs):
    """StackedCheckpointMixin's loading around `stock_load` (a PreTrainedModel's bound
    _load_pretrained_model), also for a stock model class that holds slot-loaded layers as
    submodules (Janus's MultiModalityCausalLM holding our Llama). all_required=False: only an
    unfilled slot is an error; other missing weights get stock's warning, as stock's class has it."""
    if kwargs.get("low_cpu_mem_usage") or kwargs.get("device_map") is not None:
        # that loader assigns only names found in state_dict(), which would skip every slot
        raise ValueError(f"{cls.__name__} loads checkpoint tensors into stacked or fused layers without "
                         "low_cpu_mem_usage or device_map; leave both unset")
    # Stock loads a checkpoint saved without the base model's prefix into the base model.
    base = cls.base_model_prefix
    root = model
    if base and hasattr(model, base) and not any(key.startswith(base) for key in loaded_keys):
        root = getattr(model, base)
    names = model_keys_of_checkpoint(root, loaded_keys)
    result = stock_load(model, state_dict, names, *args, **kwargs)
    missing_keys = result[1]  # stock returns (model, missing_keys, unexpected_keys, ...)
    slot_params = set(_slot_params(root))  # missing slot parameters are named by their unfilled slots
    check_complete(root, [key for key in missing_keys if key not in slot_params] if all_required else [])
    return result
