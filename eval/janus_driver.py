"""Janus-Pro driven as the judge's script drives it, for the harness and the tests.

The janus package is the branch's llm/inference/janus_pro/janus, beside the mindnlp tree in use;
the judge copies its script into that folder and runs it there, so `import janus` is that package.
Per prompt: load_pil_images and the VLChatProcessor call on the conversation, the pixel values cast
to the model's dtype, prepare_inputs_embeds (SigLIP tower, aligner, merge), then
language_model.generate with the merged embeddings, the attention mask and the tokenizer's
pad (its eos), bos and eos ids. Stock is the same code with MINDNLP_ACCEL=0.
"""
import importlib.util
import os
import sys
import time

from janus_cpu_shims import janus_on_cpu


def janus_dir():
    """The branch's llm/inference/janus_pro beside the importable mindnlp, or None (the wheel has none)."""
    spec = importlib.util.find_spec("mindnlp")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(os.path.dirname(spec.submodule_search_locations[0]), "llm", "inference", "janus_pro")
    return path if os.path.isfile(os.path.join(path, "janus", "models", "modeling_vlm.py")) else None


def import_janus():
    """Make `import janus` find the branch's package; a clear error where the base has none."""
    path = janus_dir()
    if path is None:
        raise RuntimeError("this mindnlp tree has no llm/inference/janus_pro (the 0.4.1 wheel): Janus-Pro runs "
                           "on a base of the 0.4 branch")
    if path not in sys.path:
        sys.path.insert(0, path)


def conversation(image_path: str, question: str):
    return [{"role": "<|User|>", "content": f"<image_placeholder>\n{question}", "images": [image_path]},
            {"role": "<|Assistant|>", "content": ""}]


def load(path: str, dtype):
    """(MultiModalityCausalLM, VLChatProcessor) as the judge loads them (trust_remote_code as it passes)."""
    import_janus()
    from mindnlp.transformers import AutoModelForCausalLM
    from janus.models import VLChatProcessor

    with janus_on_cpu():
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, ms_dtype=dtype)
    return model, VLChatProcessor.from_pretrained(path)


def served(model) -> dict:
    """The classes that serve the vision tower, the aligner and the language model, as module.Name."""
    return {name: f"{type(part).__module__}.{type(part).__name__}" for name, part in
            (("vision", model.vision_model), ("aligner", model.aligner), ("language", model.language_model))}


def prepare(model, processor, image_path: str, question: str, timings=None):
    """generate() kwargs for language_model, made as the judge makes them; timings["processor_s"]
    gets the processor's share (image load and the processor call, synchronised)."""
    import mindspore
    from janus.utils.io import load_pil_images

    start = time.perf_counter()
    conv = conversation(image_path, question)
    inputs = processor(conversations=conv, images=load_pil_images(conv), force_batchify=True)
    if timings is not None:
        mindspore.runtime.synchronize()
        timings["processor_s"] = time.perf_counter() - start
    inputs.pixel_values = inputs.pixel_values.astype(model.language_model.get_input_embeddings().weight.dtype)
    embeds = model.prepare_inputs_embeds(**inputs)
    tokenizer = processor.tokenizer
    return {"inputs_embeds": embeds, "attention_mask": inputs.attention_mask, "pad_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
