"""Qwen2-VL's M-RoPE positions, computed on the host from what the processor produced.

Stock's get_rope_index walks each row with device ops and many host reads (argwhere, tolist,
.item() per grid value, bool-mask setitem). Every value it needs is host data the processor
made: the ids, the attention mask and the grids. Here the same rule runs in NumPy:
  - text runs get the same position on all three streams, counting on from the last piece;
  - an image or video of (t, h, w) patches is t x (h / merge) x (w / merge) tokens, whose streams
    hold their temporal, row and column index, offset by the position the text reached;
  - padded slots (attention mask 0) hold 1 on every stream;
  - the row's delta is its largest position + 1 - the row length, so a token appended at cache
    position c has position c + delta on all streams.
Without grids the positions are the text rule (cumsum of the mask - 1) and the delta is taken over
all slots, padding included, as stock takes it.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


def host_array(tensor) -> Optional[np.ndarray]:
    """A processor output as a NumPy array (None and arrays stay as they are). The processor built these
    tensors from host arrays, so reading them back waits for no device work."""
    return tensor if tensor is None or isinstance(tensor, np.ndarray) else tensor.asnumpy()


@dataclass(frozen=True)
class VisionTokens:
    """The token ids and merge size get_rope_index reads from the config."""

    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    spatial_merge_size: int

    @classmethod
    def from_config(cls, config) -> "VisionTokens":
        return cls(config.image_token_id, config.video_token_id, config.vision_start_token_id,
                   config.vision_config.spatial_merge_size)


def mrope_positions(input_ids: np.ndarray, attention_mask: Optional[np.ndarray], image_grid: Optional[np.ndarray],
                    video_grid: Optional[np.ndarray], tokens: VisionTokens) -> Tuple[np.ndarray, np.ndarray]:
    """(positions int64 [3, B, S], deltas int64 [B, 1]) for ids [B, S], mask [B, S] or None and grids
    [n, 3] (t, h, w) or None, equal to stock's get_rope_index."""
    batch, length = input_ids.shape
    if image_grid is None and video_grid is None:
        return _text_positions(batch, length, attention_mask)
    positions = np.ones((3, batch, length), np.int64)
    deltas = np.zeros((batch, 1), np.int64)
    grids = {tokens.image_token_id: _GridQueue(image_grid), tokens.video_token_id: _GridQueue(video_grid)}
    for row in range(batch):
        real = attention_mask[row] == 1 if attention_mask is not None else np.ones(length, bool)
        row_positions = _row_positions(input_ids[row][real].tolist(), grids, tokens)
        positions[:, row, real] = row_positions
        deltas[row, 0] = row_positions.max() + 1 - length
    return positions, deltas


def _text_positions(batch, length, attention_mask):
    if attention_mask is None:
        positions = np.broadcast_to(np.arange(length, dtype=np.int64), (3, batch, length)).copy()
        return positions, np.zeros((batch, 1), np.int64)
    mask = attention_mask.astype(np.int64)
    plane = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
    deltas = plane.max(-1, keepdims=True) + 1 - length
    return np.broadcast_to(plane, (3, batch, length)).copy(), deltas


class _GridQueue:
    """The grids of one kind (images or videos), handed out in order across the whole batch."""

    def __init__(self, grid):
        self.grid = None if grid is None else np.asarray(grid, np.int64).reshape(-1, 3)
        self.next = 0

    def take(self, kind):
        if self.grid is None or self.next >= len(self.grid):
            raise ValueError(f"the prompt has more {kind} spans than grids were given")
        thw = self.grid[self.next]
        self.next += 1
        return thw


def _row_positions(ids: list, grids: dict, tokens: VisionTokens) -> np.ndarray:
    """int64 [3, n] for the real tokens `ids` of one row."""
    image_id, video_id = tokens.image_token_id, tokens.video_token_id
    starts = [i for i, token in enumerate(ids) if token == tokens.vision_start_token_id and i + 1 < len(ids)]
    following = [ids[i + 1] for i in starts]
    remaining = {image_id: following.count(image_id), video_id: following.count(video_id)}
    pieces, start = [], 0
    for _ in range(remaining[image_id] + remaining[video_id]):
        ends = {kind: _find(ids, kind, start) if remaining[kind] > 0 else len(ids) + 1 for kind in (image_id, video_id)}
        kind = image_id if ends[image_id] < ends[video_id] else video_id
        end = ends[kind]
        remaining[kind] -= 1
        t, h, w = grids[kind].take("image" if kind == image_id else "video")
        h, w = h // tokens.spatial_merge_size, w // tokens.spatial_merge_size
        offset = _next_position(pieces)
        text = end - start
        pieces.append(np.broadcast_to(np.arange(text, dtype=np.int64), (3, text)) + offset)
        grid = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")).reshape(3, -1)
        pieces.append(grid.astype(np.int64) + text + offset)
        start = end + t * h * w
    if start < len(ids):
        text = len(ids) - start
        pieces.append(np.broadcast_to(np.arange(text, dtype=np.int64), (3, text)) + _next_position(pieces))
    return np.concatenate(pieces, axis=1)


def _find(ids, token, start):
    try:
        return ids.index(token, start)
    except ValueError:
        raise ValueError(f"a vision span announces token {token} that does not follow in the prompt") from None


def _next_position(pieces):
    """Where the next piece starts: one past the largest position of the last piece (stock's rule)."""
    if not pieces:
        return 0
    if pieces[-1].size == 0:
        raise ValueError("two vision spans with no token between them (stock's get_rope_index fails there too)")
    return int(pieces[-1].max()) + 1


def patch_order(grid: np.ndarray, merge: int) -> np.ndarray:
    """int32 [S, 2]: each patch's (row, column) in the processor's order, 2 x 2 merge windows
    contiguous, frames one after another (stock's rot_pos_emb)."""
    ids = []
    for t, h, w in grid.tolist():
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        window = lambda a: a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)  # noqa: E731
        ids.append(np.tile(np.stack([window(rows), window(cols)], -1), (t, 1)))
    return np.concatenate(ids).astype(np.int32)


def frame_spans(grid: np.ndarray):
    """[(start, stop)] of every frame's patches (an image is one frame)."""
    ends = np.cumsum(np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])).tolist()
    return list(zip([0] + ends[:-1], ends))
