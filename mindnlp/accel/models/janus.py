"""Janus-Pro's understanding path wired to ours: the janus package (llm/inference/janus_pro/janus/,
on mindnlp's 0.4 branch only) calls `install_vlm(globals())` at the end of modeling_vlm.py and
`install_processor(globals())` at the end of processing_vlm.py; that one line per file is the whole
of the series' branch-only patch. With MINDNLP_ACCEL=0 both do nothing.

install_vlm rebinds, in modeling_vlm's namespace, the names its model_name_to_cls returns:
CLIPVisionTower and MlpProjector become builders that make ours (janus_vision) for the
configurations ours implements and stock's otherwise (the reason logged once); MlpProjector also
builds the generation half's gen_aligner (an mlp_gelu too, the same arithmetic); and it replaces
MultiModalityCausalLM.prepare_inputs_embeds by a merge without prints, nonzero or host reads (the
tower and the aligner one graph where graphs are on: janus_vision.image_embeddings). The language
model is ours already: janus takes LlamaForCausalLM from mindnlp.transformers. install_processor
makes VLChatProcessor's special-id properties read the tokenizer's vocabulary once instead of
rebuilding it (a dict of the whole vocabulary, for a fast tokenizer) per access, and its call build
its outputs on the host (janus_processor).
"""
import functools
import logging

import mindspore
from mindnlp.core import ops

from ..layers.primitives import take_rows
from ..loading import hf_state_dict, load_with_slots
from ..registry import enabled
from . import janus_processor, janus_vision

logger = logging.getLogger(__name__)
_logged = set()


def _fallback(what: str, reason: str) -> None:
    if (what, reason) not in _logged:
        _logged.add((what, reason))
        logger.warning("mindnlp.accel: stock %s for %s", what, reason)


def install_vlm(namespace: dict) -> None:
    """Wire janus.models.modeling_vlm (its module globals) to ours."""
    if not enabled() or namespace.get("_accel_installed"):
        return
    namespace["_accel_installed"] = True
    stock = {name: namespace[name] for name in ("CLIPVisionTower", "MlpProjector")}
    model_class = namespace["MultiModalityCausalLM"]
    stock["prepare_inputs_embeds"] = model_class.prepare_inputs_embeds
    namespace["CLIPVisionTower"] = functools.partial(_vision_tower, stock["CLIPVisionTower"])
    namespace["MlpProjector"] = functools.partial(_aligner, stock["MlpProjector"])
    model_class.prepare_inputs_embeds = functools.partialmethod(_prepare_inputs_embeds,
                                                                stock["prepare_inputs_embeds"])
    # our Llama holds fused projections: load and save it under the checkpoint's names
    stock_load = model_class._load_pretrained_model.__func__
    model_class._load_pretrained_model = classmethod(
        lambda cls, *args, **kwargs: load_with_slots(functools.partial(stock_load, cls), cls, *args,
                                                     all_required=False, **kwargs))
    model_class.save_pretrained = functools.partialmethod(_save_pretrained, model_class.save_pretrained)


def _save_pretrained(model, stock_save, save_directory, *args, state_dict=None, **kwargs):
    return stock_save(model, save_directory, *args, state_dict=hf_state_dict(model) if state_dict is None else state_dict,
                      **kwargs)


def _vision_tower(stock_class, **params):
    reason = janus_vision.tower_unsupported(params)
    if reason:
        _fallback("CLIPVisionTower", reason)
        return stock_class(**params)
    return janus_vision.build_tower(**params)


def _aligner(stock_class, cfg):
    reason = janus_vision.aligner_unsupported(cfg)
    if reason:
        _fallback("MlpProjector", reason)
        return stock_class(cfg)
    return janus_vision.build_aligner(cfg)


def _prepare_inputs_embeds(model, stock_method, input_ids, pixel_values, images_seq_mask, images_emb_mask,
                           **kwargs):
    reason = merge_unsupported(model, pixel_values, images_seq_mask)
    if reason:
        _fallback("prepare_inputs_embeds", reason)
        return stock_method(model, input_ids, pixel_values, images_seq_mask, images_emb_mask, **kwargs)
    images = pixel_values.reshape((-1,) + tuple(pixel_values.shape[2:]))
    image_embeds = janus_vision.image_embeddings(model, images)
    if image_embeds.shape[1] != images_emb_mask.shape[-1]:
        # the processor reserved another number of positions than the tower gives rows: stock's
        # concatenation then changes the sequence length, which a merge in place cannot reproduce
        _fallback("prepare_inputs_embeds", f"{images_emb_mask.shape[-1]} image positions for "
                                           f"{image_embeds.shape[1]} image rows")
        return stock_method(model, input_ids, pixel_values, images_seq_mask, images_emb_mask, **kwargs)
    # stock maps negative ids (none come from the processor) to 0 before the lookup
    text_embeds = model.language_model.get_input_embeddings()(ops.clamp(input_ids, min=0))
    return merge_image_embeds(text_embeds, image_embeds[0], images_seq_mask)


def merge_unsupported(model, pixel_values, images_seq_mask):
    """Why the merge below would not give stock's result, judged from what the host knows, or None.

    Stock replaces the span from the first to the last image position of the (first) sequence by
    the image embeddings, which assumes one image whose positions are contiguous: for one image in a
    batch of one, the processor makes exactly that, with as many positions as images_emb_mask has
    (checked against the tower's rows once they exist)."""
    batch, images = pixel_values.shape[:2]
    if (batch, images) != (1, 1):
        return f"{batch} sequences with {images} images each (ours merges one image in one sequence)"
    if images_seq_mask.dtype != mindspore.bool_:
        return f"images_seq_mask of dtype {images_seq_mask.dtype}"
    embed_dtype = model.language_model.get_input_embeddings().weight.dtype
    if pixel_values.dtype != embed_dtype:
        return f"pixel values in {pixel_values.dtype} for embeddings in {embed_dtype}"
    return None


def merge_image_embeds(text_embeds, image_embeds, images_seq_mask):
    """text_embeds [1, T, D] with its image positions (images_seq_mask [1, T], True on one contiguous
    span of image_embeds' N rows) replaced by image_embeds [N, D], in order: stock's concatenation
    of the text before the span, the image rows and the text after it, without reading the span on
    the host."""
    rows = image_embeds.shape[0]
    index = ops.clamp(ops.cumsum(images_seq_mask.astype(mindspore.int32), -1) - 1, 0, rows - 1)
    picked = take_rows(image_embeds, index[0]).unsqueeze(0)
    return ops.where(images_seq_mask.unsqueeze(-1), picked, text_embeds)


SPECIAL_ID_PROPERTIES = {"image_id": "image_tag", "image_start_id": "image_start_tag",
                         "image_end_id": "image_end_tag", "pad_id": "pad_tag"}


def install_processor(namespace: dict) -> None:
    """Wire janus.models.processing_vlm (its module globals): VLChatProcessor's special ids cached, its
    call on the host."""
    if not enabled() or namespace.get("_accel_installed"):
        return
    namespace["_accel_installed"] = True
    processor_class = namespace["VLChatProcessor"]
    for name, tag_attribute in SPECIAL_ID_PROPERTIES.items():
        setattr(processor_class, name, property(functools.partial(special_id, tag_attribute=tag_attribute)))
    stock_call = processor_class.__call__

    def call(processor, **kwargs):
        return janus_processor.call_on_host(processor, stock_call, **kwargs)

    processor_class.__call__ = call


def special_id(processor, tag_attribute: str):
    """tokenizer.vocab.get(tag), as stock's property returns it, looked up once per tag and
    tokenizer size (adding tokens to the tokenizer makes it look again)."""
    tag = getattr(processor, tag_attribute)
    key = (tag, len(processor.tokenizer))
    cache = processor.__dict__.setdefault("_accel_special_ids", {})
    if key not in cache:
        cache[key] = processor.tokenizer.vocab.get(tag)
    return cache[key]
