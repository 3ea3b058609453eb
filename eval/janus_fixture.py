"""A Janus-Pro checkpoint in the layout the branch's janus package loads: config.json of model type
multi_modality, model.safetensors, the processor's two configs and the tokenizer.

The language model is the llama fixture of the requested size (eval/fixtures.py), under
`language_model.`. The SigLIP tower keeps its real width (Janus fixes siglip_large_patch16_384 by
name: 1024 wide, 16 heads, patch 16, 384 px, 576 patches); only its depth shrinks, through a
positive select_layer, which keeps that many of the 24 blocks. The aligner is the real mlp_gelu of
depth 2 into the LM's width. The checkpoint holds no weights for what understanding never runs:
the tower's attention-pooling head and the generation half (VQ-16, gen aligner, gen head, gen
embedding); both stock and ours build those with their initial values and report them missing.

Usage: python eval/janus_fixture.py --size tiny --depth 2 --out DIR
"""
import argparse
import hashlib
import json
import os
import shutil

import ml_dtypes

import fixture_tokenizer
import fixtures

SIGLIP_WIDTH, SIGLIP_HEADS, SIGLIP_PATCH, IMAGE_SIZE = 1024, 16, 16, 384
# SigLIP blocks per fixture size: topology keeps all 24 (at the real width, the tower's compute then
# dominates a CPU prefill alike for stock and ours; the launch counts show the host's share).
DEPTHS = {"tiny": 2, "mixed": 2, "topology": 24}
PATCHES = (IMAGE_SIZE // SIGLIP_PATCH) ** 2
# Janus-Pro-7B's processor files (values as published with the model).
PROCESSOR_CONFIG = {"add_special_token": False, "ignore_id": -100, "image_tag": "<image_placeholder>",
                    "mask_prompt": True, "num_image_tokens": PATCHES, "processor_class": "VLChatProcessor",
                    "sft_format": "deepseek"}
PREPROCESSOR_CONFIG = {"background_color": [127, 127, 127], "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
                       "image_processor_type": "VLMImageProcessor", "image_size": IMAGE_SIZE,
                       "image_std": [0.5, 0.5, 0.5], "min_size": 14, "processor_class": "VLChatProcessor",
                       "rescale_factor": 0.00392156862745098}


def janus_config(size: str, depth: int) -> dict:
    language = fixtures.model_config("llama", size)
    hidden = language["hidden_size"]

    def part(model_type, cls, **params):
        return {"cls": cls, "model_type": model_type, "params": params}
    return {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": "bfloat16",
        "language_config": language,
        "vision_config": part("vision", "CLIPVisionTower", image_size=IMAGE_SIZE,
                              model_name="siglip_large_patch16_384", select_feature="same", select_layer=depth),
        "aligner_config": part("aligner", "MlpProjector", depth=2, input_dim=SIGLIP_WIDTH, n_embed=hidden,
                               projector_type="mlp_gelu"),
        "gen_vision_config": part("gen_vision", "VQ-16", image_token_size=16384, n_embed=8),
        "gen_aligner_config": part("gen_aligner", "MlpProjector", depth=2, input_dim=8, n_embed=hidden,
                                   projector_type="mlp_gelu"),
        "gen_head_config": part("gen_head", "vision_head", image_token_embed=hidden, image_token_size=16384,
                                n_embed=hidden),
    }


def vision_param_shapes(depth: int):
    width, mlp = SIGLIP_WIDTH, 4 * SIGLIP_WIDTH
    prefix = "vision_model.vision_tower"
    params = [(f"{prefix}.patch_embed.proj.weight", (width, 3, SIGLIP_PATCH, SIGLIP_PATCH)),
              (f"{prefix}.patch_embed.proj.bias", (width,)), (f"{prefix}.pos_embed", (1, PATCHES, width)),
              (f"{prefix}.norm.weight", (width,)), (f"{prefix}.norm.bias", (width,))]
    for block in range(depth):
        p = f"{prefix}.blocks.{block}"
        params += [(f"{p}.norm1.weight", (width,)), (f"{p}.norm1.bias", (width,)),
                   (f"{p}.attn.qkv.weight", (3 * width, width)), (f"{p}.attn.qkv.bias", (3 * width,)),
                   (f"{p}.attn.proj.weight", (width, width)), (f"{p}.attn.proj.bias", (width,)),
                   (f"{p}.norm2.weight", (width,)), (f"{p}.norm2.bias", (width,)),
                   (f"{p}.mlp.fc1.weight", (mlp, width)), (f"{p}.mlp.fc1.bias", (mlp,)),
                   (f"{p}.mlp.fc2.weight", (width, mlp)), (f"{p}.mlp.fc2.bias", (width,))]
    return params


def aligner_param_shapes(hidden: int):
    return [("aligner.layers.0.weight", (hidden, SIGLIP_WIDTH)), ("aligner.layers.0.bias", (hidden,)),
            ("aligner.layers.2.weight", (hidden, hidden)), ("aligner.layers.2.bias", (hidden,))]


def build(size: str, depth: int, out_dir: str, seed: int = 0) -> str:
    config = janus_config(size, depth)
    language = config["language_config"]
    os.makedirs(out_dir, exist_ok=True)
    damped = fixtures.damped_ids("llama", language)
    tensors = {f"language_model.{name}": fixtures._draw(name, shape, language, damped, seed)
               for name, shape in fixtures.param_shapes("llama", language)}
    for name, shape in vision_param_shapes(depth) + aligner_param_shapes(language["hidden_size"]):
        tensors[name] = fixtures._draw(name, shape, language, damped, seed)
    fixtures.write_safetensors(os.path.join(out_dir, "model.safetensors"),
                               {name: array.astype(ml_dtypes.bfloat16) for name, array in tensors.items()})
    fixtures._write_json(os.path.join(out_dir, "config.json"), config)
    fixtures._write_json(os.path.join(out_dir, "processor_config.json"), PROCESSOR_CONFIG)
    fixtures._write_json(os.path.join(out_dir, "preprocessor_config.json"), PREPROCESSOR_CONFIG)
    tokenizer = fixtures.TOKENIZERS["llama"]
    files = fixture_tokenizer.tokenizer_files(tokenizer["spec"], tokenizer["tokenizer_class"],
                                              tokenizer["chat_template"], tokenizer["roles"])
    for name, text in files.items():
        fixtures._write_text(os.path.join(out_dir, name), text)
    return out_dir


def ensure(size: str, depth: int, root: str, seed: int = 0) -> str:
    """Path of a complete cached fixture under root, built (in a staging directory, then renamed)
    when missing; keyed by the sources that write it, as fixtures.ensure keys its own."""
    here = os.path.dirname(os.path.abspath(__file__))
    sources = [open(os.path.join(here, name), encoding="utf-8").read()
               for name in ("janus_fixture.py", "fixtures.py", "fixture_tokenizer.py")]
    payload = json.dumps({"size": size, "depth": depth, "seed": seed, "sources": sources}, sort_keys=True)
    path = os.path.join(root, f"janus-{size}-d{depth}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}")
    if os.path.isfile(os.path.join(path, fixtures.COMPLETE_MARKER)):
        return path
    staging = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    build(size, depth, staging, seed)
    fixtures._write_text(os.path.join(staging, fixtures.COMPLETE_MARKER), "complete\n")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=fixtures.SIZES, default="tiny")
    parser.add_argument("--depth", type=int, default=2, help="SigLIP blocks kept (1 to 24)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not 1 <= args.depth <= 24:
        parser.error("--depth must be 1 to 24")
    print(build(args.size, args.depth, args.out))


if __name__ == "__main__":
    main()
