"""StaticKVCache: in-place overwrites at device-tensor slots, masks, reads."""
import numpy as np
import pytest
import mindspore
from mindspore import Tensor

from mindnlp.core import ops
from mindnlp.accel.cache import StaticKVCache
from mindnlp.accel.layers.attention import build_attention_mask

B, KV, L, D = 2, 3, 8, 4


def tensor(array, dtype=mindspore.float32):
    return Tensor(np.asarray(array), dtype)


def slots(*values):
    return tensor(values, mindspore.int32)


def write(cache, layer, where, keys, values):
    cache.write(layer, where, ops.cat((tensor(keys), tensor(values)), 1))


def random_kv(rng, steps):
    return rng.standard_normal((B, KV, steps, D)).astype(np.float32)


@pytest.fixture
def cache():
    return StaticKVCache(num_layers=2, batch_size=B, num_kv_heads=KV, max_len=L, head_dim=D)


def test_starts_empty(cache):
    keys, values = cache.read(0)
    assert keys.shape == (B, KV, L, D) and values.shape == (B, KV, L, D)
    assert not keys.asnumpy().any() and not values.asnumpy().any()


def test_writes_land_at_arbitrary_slots_only(cache):
    rng = np.random.default_rng(0)
    k, v = random_kv(rng, 2), random_kv(rng, 2)
    write(cache, 1, cache.prepare(slots(5, 2)), k, v)
    keys, values = (t.asnumpy() for t in cache.read(1))
    np.testing.assert_array_equal(keys[:, :, 5], k[:, :, 0])
    np.testing.assert_array_equal(keys[:, :, 2], k[:, :, 1])
    np.testing.assert_array_equal(values[:, :, 5], v[:, :, 0])
    np.testing.assert_array_equal(values[:, :, 2], v[:, :, 1])
    untouched = [t for t in range(L) if t not in (2, 5)]
    assert not keys[:, :, untouched].any() and not values[:, :, untouched].any()
    assert not cache.read(0)[0].asnumpy().any(), "another layer was written"


def test_write_overwrites_rather_than_adds(cache):
    rng = np.random.default_rng(1)
    where = cache.prepare(slots(3))
    write(cache, 0, where, random_kv(rng, 1), random_kv(rng, 1))
    k, v = random_kv(rng, 1), random_kv(rng, 1)
    write(cache, 0, where, k, v)
    keys, values = (t.asnumpy() for t in cache.read(0))
    np.testing.assert_array_equal(keys[:, :, 3], k[:, :, 0])
    np.testing.assert_array_equal(values[:, :, 3], v[:, :, 0])


def test_one_prepared_index_serves_every_layer(cache):
    rng = np.random.default_rng(2)
    where = cache.prepare(slots(0, 1, 2))
    written = [random_kv(rng, 3) for _ in range(2)]
    for layer, k in enumerate(written):
        write(cache, layer, where, k, -k)
    for layer, k in enumerate(written):
        keys, values = (t.asnumpy() for t in cache.read(layer, kv_len=3))
        np.testing.assert_array_equal(keys, k)
        np.testing.assert_array_equal(values, -k)


def test_decode_mask_over_the_cache_row():
    """The caller's mask covers the whole cache (1 for every slot after the prompt); padding and
    slots after the query (unwritten, or a previous call's) stay hidden, so a reused cache needs no clearing."""
    valid = tensor([[0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]], mindspore.int32)
    hidden = build_attention_mask(valid, slots(3), mindspore.float32).hidden.asnumpy()
    assert hidden.shape == (B, 1, 1, L)
    expected = np.ones((B, L), bool)
    expected[0, 1:4] = False
    expected[1, 0:4] = False
    np.testing.assert_array_equal(hidden[:, 0, 0], expected)
    short = build_attention_mask(valid[:, :4], slots(3), mindspore.float32).additive.asnumpy()
    assert short.shape == (B, 1, 1, 4)
    assert short[0, 0, 0, 0] == np.float32(ops.finfo(mindspore.float32).min) and not short[0, 0, 0, 1:].any()


def test_prefill_mask_is_causal_over_slots():
    valid = tensor(np.ones((B, 3)), mindspore.int32)
    hidden = build_attention_mask(valid, slots(0, 1, 2), mindspore.float32).hidden.asnumpy()
    np.testing.assert_array_equal(hidden[0, 0], np.triu(np.ones((3, 3), bool), k=1))


def test_read_prefix(cache):
    keys, values = cache.read(0, kv_len=5)
    assert keys.shape == (B, KV, 5, D) and values.shape == (B, KV, 5, D)


@pytest.mark.parametrize("kv_len", [0, L + 1])
def test_bad_kv_len(cache, kv_len):
    with pytest.raises(ValueError, match="kv_len"):
        cache.read(0, kv_len=kv_len)


def test_bad_write_shape(cache):
    wrong = tensor(np.zeros((B, 2 * KV, 2, D), np.float32))
    with pytest.raises(ValueError, match="cache write"):
        cache.write(0, cache.prepare(slots(1)), wrong)


def test_bad_construction():
    with pytest.raises(ValueError, match="max_len"):
        StaticKVCache(num_layers=1, batch_size=1, num_kv_heads=1, max_len=0, head_dim=4)


def test_reorder_cache_moves_whole_rows():
    cache = StaticKVCache(num_layers=2, batch_size=3, num_kv_heads=2, max_len=4, head_dim=2)
    keys = Tensor(np.arange(3 * 2 * 4 * 2, dtype=np.float32).reshape(3, 2, 4, 2))
    where = cache.prepare(Tensor(np.arange(4, dtype=np.int32)))
    for layer in range(2):
        cache.write(layer, where, ops.cat((keys + layer, -keys), 1))
    cache.reorder_cache(Tensor(np.array([2, 2, 0], np.int32)))
    got_keys, got_values = cache.read(1)
    expected = keys.asnumpy()[[2, 2, 0]]
    np.testing.assert_array_equal(got_keys.asnumpy(), expected + 1)
    np.testing.assert_array_equal(got_values.asnumpy(), -expected)
