"""Janus-Pro understanding, called as the judge's script calls it, with the outputs saved for comparison.

Writes an .npz with the merged embeddings, the sequences and the logits of every step, and prints
one RESULT line naming the classes that served the vision tower, the aligner and the language model.

Usage: python eval/janus_generate.py --model DIR --image PNG --question TEXT --out FILE.npz
       [--dtype float32|float16] [--max-new-tokens N]
"""
import argparse
import json
import os
import sys

import numpy as np
import mindspore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import janus_driver  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--question", default="describe this image")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if mindspore.get_context("device_target") == "CPU":
        mindspore.runtime.launch_blocking()
    from mindnlp.core import no_grad

    model, processor = janus_driver.load(args.model, getattr(mindspore, args.dtype))
    inputs = janus_driver.prepare(model, processor, args.image, args.question)
    with no_grad():
        out = model.language_model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                                            use_cache=True, return_dict_in_generate=True, output_logits=True)
    np.savez(args.out, embeds=inputs["inputs_embeds"].astype(mindspore.float32).asnumpy(),
             sequences=out.sequences.asnumpy(),
             logits=np.stack([step.astype(mindspore.float32).asnumpy() for step in out.logits]))
    print("RESULT " + json.dumps(janus_driver.served(model)))


if __name__ == "__main__":
    main()
