"""The contest judge's measuring protocol, reproduced in our own code (facts in shared/CONTEST.md).

Per model: the judge script's warm-ups (its warm-up prompt and, for the vision families, its
277 x 182 warm-up picture; WARMUP_CALLS calls of WARMUP_TOKENS tokens), then for every prompt
  prefill  = wall time of one whole generate(max_new_tokens=1) without logits, input preparation
             included (the processor and vision tower for Qwen2-VL, tokenizer and embedding lookup
             for Janus's LM), with mindspore.runtime.synchronize() on both sides;
  decode   = (wall time of generate(max_new_tokens=N) - prefill) / new tokens, except Qwen2-VL,
             whose judge script divides the whole end-to-end time by the new tokens;
  memory   = peak over the whole run, loading and warm-up included, as the judge reads it (it never
             resets): mindspore.runtime.max_memory_reserved() where the device reports it, else the
             process's peak resident set (VmHWM); the timed phase's own peak beside it.
Every generate call is greedy: do_sample=False, use_cache=True, return_dict_in_generate=True, and
output_logits=True in the timed end-to-end call, as the judge asks for logits only there. Its
per-step logits, token ids and text are kept for the pass check. A `compiles` callable, if given,
counts the model's compiles: each call's share is kept, so the report can show that none fell in a
timed call.

The janus family is Janus-Pro end to end, as the judge's script runs it (eval/janus_driver.py):
the processor, prepare_inputs_embeds and language_model.generate, all inside the timed region; its
stock is the same janus code with MINDNLP_ACCEL=0. It needs the branch's janus package. The llama
family stands for Janus-Pro's language model alone, on any base, driven as Janus drives it:
embeddings from model.get_input_embeddings()(input_ids), then generate(inputs_embeds=...,
attention_mask=...), with the 576 image positions holding the <image_placeholder> token's embedding.
For the vision families the processor's share of prefill is timed on its own (processor_s).
"""
import importlib
import importlib.util
import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

import demo_images
import janus_driver

FAMILY_MODEL_TYPES = {"qwen2_moe": "qwen2_moe", "deepseek": "deepseek", "qwen2_vl": "qwen2_vl", "llama": "llama",
                      "janus": "multi_modality"}
STOCK_CLASSES = {
    "qwen2_moe": ("mindnlp.transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeForCausalLM"),
    "deepseek": ("mindnlp.transformers.models.deepseek.modeling_deepseek", "DeepseekForCausalLM"),
    "qwen2_vl": ("mindnlp.transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "llama": ("mindnlp.transformers.models.llama.modeling_llama", "LlamaForCausalLM"),
    "janus": ("janus.models.modeling_vlm", "MultiModalityCausalLM"),
}
MOE_FAMILIES = ("qwen2_moe", "deepseek")
VISION_FAMILIES = ("qwen2_vl", "llama", "janus")
VARIANTS = ("stock", "ours")

SYSTEM_PROMPT = "You are a helpful assistant."
NEWS_TEXT = (
    "The city council of Riverton voted on Tuesday to approve a flood barrier along the east bank of "
    "the Mill River, ending two years of debate. The project, estimated at 48 million dollars, will "
    "raise the embankment by two metres and add three pumping stations near the old harbour.\n\n"
    "Supporters said the barrier was overdue after storms flooded more than four hundred homes last "
    "autumn. Opponents, including several shop owners on Water Street, argued that construction would "
    "close the riverside market for most of a year and questioned whether the budget was realistic.\n\n"
    "Work is expected to begin in the spring and finish within three years. The council said it would "
    "apply for state funds to cover half of the cost and would hold monthly public meetings to report "
    "on progress and on the market's temporary move to the central square."
)
MOE_PROMPTS = (
    ("hello", "Hello, how are you?"),
    ("novelist", "Hillary is a mystery novelist who studied writing at Yale. What kind of detective "
                 "stories might she write, and how could her training have shaped her style?"),
    ("summary", "Summarize the following news article in a few sentences.\n\n" + NEWS_TEXT),
)
VISION_PROMPTS = (
    ("describe", "cat", "Describe the image"),
    ("story", "man", "Generate a Story about the image"),
)
# Janus: system prompt of its conversation format, and how one image expands into tokens
# (a 384 x 384 image through SigLIP-L/16 gives 24 x 24 = 576 positions).
JANUS_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
JANUS_IMAGE_TOKENS = 576
JANUS_IMAGE_TAG = "<image_placeholder>"
JANUS_IMAGE_START = "<begin_of_image>"
JANUS_IMAGE_END = "<end_of_image>"

GENERATE_KWARGS = {"do_sample": False, "use_cache": True, "return_dict_in_generate": True, "output_logits": True}
# The judge's prefill call and warm-ups ask for no logits.
WITHOUT_LOGITS = dict(GENERATE_KWARGS, output_logits=False)

# The judge scripts' warm-ups: the prompt, and for the vision families the 277 x 182 warm-up picture;
# Qwen2-VL's script warms up five times, the others once, each with 10 new tokens.
MOE_WARMUP = "Hello, this is a warm-up sequence to prepare the model."
QWEN2_VL_WARMUP = "This a warm up prompt"
JANUS_WARMUP = "Hello, this is a warm-up sequence to prepare the Janus model."
WARMUP_CALLS = {"qwen2_vl": 5}
WARMUP_TOKENS = 10


class FixtureError(ValueError):
    """A model directory or input the protocol cannot use."""


@dataclass
class Loaded:
    """A model ready for run_family, and what was loaded."""
    family: str
    variant: str
    path: str
    model: object
    processor: object
    model_class: str
    ours_is_stock: bool
    load_s: float


def family_of(path):
    """The family whose model_type the config at path declares."""
    model_type = _read_config(path).get("model_type")
    for family, expected in FAMILY_MODEL_TYPES.items():
        if model_type == expected:
            return family
    raise FixtureError(f"{path}: unknown config type {model_type!r}; known: {sorted(FAMILY_MODEL_TYPES.values())}")


def _read_config(path):
    if not os.path.isdir(path):
        raise FixtureError(f"model directory {path!r} does not exist")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FixtureError(f"{path}: no config.json (missing or partial model directory)")
    try:
        with open(config_path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise FixtureError(f"{config_path}: not valid JSON ({error})") from error


def _check_safetensors(path):
    """Raise if a safetensors file is truncated: its header must parse and its data must fit."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise FixtureError(f"{path}: truncated safetensors file ({size} bytes)")
        header_len = int.from_bytes(prefix, "little")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise FixtureError(f"{path}: unreadable safetensors header ({error})") from error
    end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    if size < 8 + header_len + end:
        raise FixtureError(f"{path}: truncated safetensors file ({size} bytes, header needs {8 + header_len + end})")


def check_model_dir(family, path):
    """Validate a Hugging Face model directory for family; returns its config dict."""
    if family not in FAMILY_MODEL_TYPES:
        raise FixtureError(f"unknown family {family!r}; known: {sorted(FAMILY_MODEL_TYPES)}")
    config = _read_config(path)
    if config.get("model_type") != FAMILY_MODEL_TYPES[family]:
        raise FixtureError(f"{path}: config type {config.get('model_type')!r} is not {family}'s "
                           f"{FAMILY_MODEL_TYPES[family]!r}")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    for shard in shards:
        shard_path = os.path.join(path, shard)
        if not os.path.isfile(shard_path):
            raise FixtureError(f"{path}: weight file {shard} is missing (partial model directory)")
        _check_safetensors(shard_path)
    required = ["tokenizer_config.json"] + (["preprocessor_config.json"] if family in ("qwen2_vl", "janus") else [])
    required += ["processor_config.json"] if family == "janus" else []
    missing = [name for name in required if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise FixtureError(f"{path}: missing {', '.join(missing)} (partial model directory)")
    return config


def stock_available(family):
    """Whether this mindnlp has stock's class for family (deepseek: the 0.4 branch, not the 0.4.1
    wheel), judged by its source file, so the calling process need not import mindnlp."""
    spec = importlib.util.find_spec("mindnlp")
    if spec is None or not spec.submodule_search_locations:
        raise FixtureError("mindnlp is not importable here")
    if family == "janus":
        return janus_driver.janus_dir() is not None
    module_path = STOCK_CLASSES[family][0].split(".")[1:]
    return os.path.isfile(os.path.join(spec.submodule_search_locations[0], *module_path) + ".py")


def stock_class(family):
    """Stock mindnlp's model class for family; a clear error where this mindnlp lacks it."""
    module_name, class_name = STOCK_CLASSES[family]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise FixtureError(f"this mindnlp has no {family} model ({module_name}); "
                           f"it exists on mindnlp's 0.4 branch, not in the 0.4.1 wheel") from error
    return getattr(module, class_name)


def accelerated_class(family):
    """Our class for family from mindnlp.accel.registry, or None where there is none yet."""
    try:
        registry = importlib.import_module("mindnlp.accel.registry")
    except ModuleNotFoundError as error:
        if error.name not in ("mindnlp.accel", "mindnlp.accel.registry"):
            raise
        return None
    lookup = getattr(registry, "accelerated_class", None)
    return lookup(FAMILY_MODEL_TYPES[family]) if lookup is not None else None


def default_dtype():
    """bf16 as the judge runs, except on the CPU backend where bf16 does not run."""
    import mindspore

    return mindspore.float32 if mindspore.get_context("device_target") == "CPU" else mindspore.bfloat16


def load(family, path, variant, dtype=None):
    """Load model and tokenizer (processor for Qwen2-VL) from a model directory.

    variant "stock" uses stock mindnlp's class; "ours" uses the class mindnlp.accel registers
    for the model type, or stock where there is none. What ran is read from the loaded instance,
    since our class hands back a stock model for a config it does not support: ours_is_stock is
    True when the model is exactly the stock class, and model_class is the instance's class as
    "module.Name" (ours and stock share the short name).
    """
    if variant not in VARIANTS:
        raise FixtureError(f"unknown variant {variant!r}; known: {VARIANTS}")
    check_model_dir(family, path)
    if family == "janus":
        return _load_janus(path, variant, dtype)
    from mindnlp.transformers import AutoProcessor, AutoTokenizer

    # ours needs no stock class where this mindnlp has none (deepseek on the wheel)
    stock = stock_class(family) if variant == "stock" or stock_available(family) else None
    cls = accelerated_class(family) if variant == "ours" else None
    if cls is None:
        cls = stock or stock_class(family)
    start = time.perf_counter()
    model = cls.from_pretrained(path, ms_dtype=dtype or default_dtype())
    processor = AutoProcessor.from_pretrained(path) if family == "qwen2_vl" else AutoTokenizer.from_pretrained(path)
    load_s = time.perf_counter() - start
    ran = type(model)
    return Loaded(family, variant, path, model, processor, f"{ran.__module__}.{ran.__qualname__}", ran is stock, load_s)


def _load_janus(path, variant, dtype):
    """Janus as the judge loads it. Stock and ours are the same janus code: stock is what runs with
    MINDNLP_ACCEL=0 (read when mindnlp.transformers is imported), so the variant must agree with it."""
    from mindnlp.accel import enabled

    if enabled() != (variant == "ours"):
        raise FixtureError(f"janus/{variant} needs MINDNLP_ACCEL={'1' if variant == 'ours' else '0'} in the "
                           "environment before mindnlp is imported")
    start = time.perf_counter()
    model, processor = janus_driver.load(path, dtype or default_dtype())
    load_s = time.perf_counter() - start
    served = janus_driver.served(model)
    stock = not served["language"].startswith("mindnlp.accel") and not served["vision"].startswith("mindnlp.accel")
    return Loaded("janus", variant, path, model, processor, f"{served['vision']} + {served['language']}", stock, load_s)


def generator(family, model):
    """The module whose generate() the judge calls: Janus's language model, else the model."""
    return model.language_model if family == "janus" else model


def _synchronize():
    import mindspore

    mindspore.runtime.synchronize()


def _status_bytes(field):
    """A kB field of /proc/self/status in bytes, or None where /proc is unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _resident_peak():
    """(source, bytes) of the process's peak resident set since the last reset."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return "VmHWM", peak
    return "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory():
    """Start a memory phase: device peaks and, where the kernel allows, the resident peak."""
    import mindspore

    mindspore.runtime.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def peak_memory():
    """{'source', 'peak_bytes', ...}: device counters where nonzero, else the resident peak."""
    import mindspore

    reserved = mindspore.runtime.max_memory_reserved()
    allocated = mindspore.runtime.max_memory_allocated()
    if reserved > 0:
        return {"source": "max_memory_reserved", "peak_bytes": reserved, "allocated_bytes": allocated}
    source, peak = _resident_peak()
    return {"source": source, "peak_bytes": peak}


def _load_images(images):
    """name -> PIL image from name -> path or PIL image; the demo drawing for each name not given."""
    from PIL import Image

    loaded = {name: draw() for name, draw in demo_images.DEMO_IMAGES.items() if name not in (images or {})}
    for name, image in (images or {}).items():
        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise FixtureError(f"image {name!r}: no file at {image!r}")
            with Image.open(image) as handle:
                image = handle.convert("RGB")
        loaded[name] = image
    return loaded


def _image_files(images):
    """name -> image file path (janus opens the files itself, inside the timed region): the given
    paths, and the demo drawings, written once to a temporary directory, for the names not given."""
    given = dict(images or {})
    for name, image in given.items():
        if not isinstance(image, (str, os.PathLike)) or not os.path.isfile(image):
            raise FixtureError(f"image {name!r}: janus needs an image file, got {image!r}")
    global _DEMO_IMAGE_DIR
    if _DEMO_IMAGE_DIR is None:  # removed when the process ends
        _DEMO_IMAGE_DIR = tempfile.TemporaryDirectory(prefix="janus-images-")
    for name, draw in demo_images.DEMO_IMAGES.items():
        if name not in given:
            given[name] = os.path.join(_DEMO_IMAGE_DIR.name, f"{name}.png")
            if not os.path.isfile(given[name]):
                draw().save(given[name])
    return given


_DEMO_IMAGE_DIR = None


def prompt_cases(family, images):
    """(name, prepare) per prompt; prepare() builds the generate() inputs and runs in the timed region."""
    if family in MOE_FAMILIES:
        return [(name, _chat(text)) for name, text in MOE_PROMPTS]
    pictures = _pictures(family, images)
    return [(name, {"image": pictures[image], "question": question}) for name, image, question in VISION_PROMPTS]


def warmup_case(family, images):
    """The judge script's warm-up inputs for family (prepare_inputs takes them like a prompt's)."""
    if family in MOE_FAMILIES:
        return _chat(MOE_WARMUP)
    question = QWEN2_VL_WARMUP if family == "qwen2_vl" else JANUS_WARMUP
    return {"image": _pictures(family, images)["warmup"], "question": question}


def _chat(text):
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]}


def _pictures(family, images):
    return _image_files(images) if family == "janus" else _load_images(images)


def prepare_inputs(family, model, processor, case, timings=None):
    """Inputs for generate() of generator(family, model) for one prompt; for the vision families
    timings["processor_s"] gets the processor's time (synchronised) when timings is given."""
    if family == "janus":
        return janus_driver.prepare(model, processor, case["image"], case["question"], timings)
    if family in MOE_FAMILIES:
        return dict(processor.apply_chat_template(case["messages"], add_generation_prompt=True,
                                                  return_dict=True, return_tensors="ms"))
    if family == "qwen2_vl":
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": case["question"]}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        start = time.perf_counter()
        inputs = dict(processor(text=[text], images=[case["image"]], padding=True, return_tensors="ms"))
        if timings is not None:
            _synchronize()
            timings["processor_s"] = time.perf_counter() - start
        return inputs
    tokenizer = processor
    messages = [{"role": "system", "content": JANUS_SYSTEM_PROMPT},
                {"role": "user", "content": f"{JANUS_IMAGE_TAG}\n{case['question']}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = text.replace(JANUS_IMAGE_TAG, JANUS_IMAGE_START + JANUS_IMAGE_TAG * JANUS_IMAGE_TOKENS + JANUS_IMAGE_END)
    encoded = tokenizer([text], return_tensors="ms")
    embeds = model.get_input_embeddings()(encoded["input_ids"])
    return {"inputs_embeds": embeds, "attention_mask": encoded["attention_mask"],
            "pad_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def _timed_generate(family, model, processor, case, max_new_tokens, timings=None, logits=True):
    """(seconds, generate output, inputs) for one whole call, synchronised on both sides."""
    _synchronize()
    start = time.perf_counter()
    inputs = prepare_inputs(family, model, processor, case, timings)
    kwargs = GENERATE_KWARGS if logits else WITHOUT_LOGITS
    output = generator(family, model).generate(**inputs, **kwargs, max_new_tokens=max_new_tokens)
    _synchronize()
    return time.perf_counter() - start, output, inputs


def _new_tokens(output):
    """(ids, stacked fp32 logits) of the generated tokens: one logits row per generated token, so
    the last len(logits) ids are the new ones whether or not sequences hold the prompt."""
    import mindspore

    steps = len(output.logits)
    ids = output.sequences[0, -steps:].asnumpy().astype(np.int64).tolist() if steps else []
    logits = np.stack([step[0].astype(mindspore.float32).asnumpy() for step in output.logits]) if steps else None
    return ids, logits


def _prompt_length(inputs):
    key = "input_ids" if "input_ids" in inputs else "inputs_embeds"
    return int(inputs[key].shape[1])


def _image_tokens(model, inputs):
    """How many of the prompt's positions are image tokens (Qwen2-VL's image_token_id), else None."""
    token = getattr(model.config, "image_token_id", None)
    if token is None or "input_ids" not in inputs:
        return None
    return int((inputs["input_ids"].asnumpy() == token).sum())


def run_family(family, model, processor, max_new_tokens=50, images=None, warmup=True, compiles=None):
    """Run the judge's protocol on an already-loaded model; returns per-prompt results and timings.

    processor is the tokenizer (the Qwen2VLProcessor for qwen2_vl). images maps "cat", "man" and
    "warmup" to paths or PIL images for the vision families (each one not given: its demo drawing).
    compiles: a callable giving how many compiles the model has made so far, or None.
    """
    if family not in FAMILY_MODEL_TYPES:
        raise FixtureError(f"unknown family {family!r}; known: {sorted(FAMILY_MODEL_TYPES)}")
    if max_new_tokens < 1:
        raise FixtureError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    cases = prompt_cases(family, images)
    counted = compiles or (lambda: 0)
    from mindnlp.core import no_grad

    with no_grad():
        warmup_s, warmup_compiles = None, counted()
        if warmup:
            case = warmup_case(family, images)
            warmup_s = sum(_timed_generate(family, model, processor, case, min(WARMUP_TOKENS, max_new_tokens),
                                           logits=False)[0] for _ in range(WARMUP_CALLS.get(family, 1)))
        warmup_compiles = counted() - warmup_compiles
        before_timed = peak_memory()
        resettable = reset_peak_memory()
        phase_start = _status_bytes("VmRSS")
        prompts = []
        for name, case in tqdm(cases, desc=family, unit="prompt"):
            timings, seen = {}, counted()
            prefill_s, _, _ = _timed_generate(family, model, processor, case, 1, timings, logits=False)
            prefill_compiles, seen = counted() - seen, counted()
            e2e_s, output, inputs = _timed_generate(family, model, processor, case, max_new_tokens)
            ids, logits = _new_tokens(output)
            if not ids:
                raise RuntimeError(f"{family}/{name}: generate returned no new tokens")
            body = e2e_s if family == "qwen2_vl" else e2e_s - prefill_s
            prompts.append({
                "name": name,
                "prompt_tokens": _prompt_length(inputs),
                "image_tokens": _image_tokens(model, inputs),
                "new_tokens": len(ids),
                "ids": ids,
                "text": getattr(processor, "tokenizer", processor).decode(ids, skip_special_tokens=True),
                "logits": logits,
                "prefill_s": prefill_s,
                "processor_s": timings.get("processor_s"),
                "e2e_s": e2e_s,
                "decode_per_token_s": body / len(ids),
                "compiles": {"prefill_call": prefill_compiles, "e2e_call": counted() - seen},
            })
        timed = peak_memory()
    memory = dict(timed, peak_bytes=max(before_timed["peak_bytes"], timed["peak_bytes"]),
                  timed_peak_bytes=timed["peak_bytes"], peak_reset=resettable, phase_start_bytes=phase_start)
    return {
        "family": family,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "max_new_tokens": max_new_tokens,
        "decode_rule": "e2e / new_tokens" if family == "qwen2_vl" else "(e2e - prefill) / new_tokens",
        "warmup_s": warmup_s,
        "warmup_compiles": warmup_compiles,
        "prompts": prompts,
        "prefill_s": float(np.mean([p["prefill_s"] for p in prompts])),
        "processor_s": float(np.mean([p["processor_s"] for p in prompts])) if prompts[0]["processor_s"] is not None
        else None,
        "decode_per_token_s": float(np.mean([p["decode_per_token_s"] for p in prompts])),
        "memory": memory,
    }
