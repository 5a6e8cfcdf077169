"""KV memory sizing and the slot storage: bytes per token from the config, the budget, the rows."""

from __future__ import annotations

import psutil
import pytest
import torch

from fastvlm_engine.engine.fast_path import context_buckets
from fastvlm_engine.engine.kv import KVCapacity, SlotKVCache, kv_bytes_per_token, kv_memory_budget, plan_capacity


def _qwen2(**overrides):
    from transformers import Qwen2Config

    fields = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
              "max_position_embeddings": 32768, "vocab_size": 1000, **overrides}
    return Qwen2Config(**fields)


def test_bytes_per_token_follow_the_config():
    # FastVLM-0.5B's language model (Qwen2-0.5B): 24 layers x 2 KV heads x 64 dims x K,V x bf16 = 12 KiB
    assert kv_bytes_per_token(_qwen2(), torch.bfloat16) == 12 * 1024
    assert kv_bytes_per_token(_qwen2(), torch.float32) == 24 * 1024
    assert kv_bytes_per_token(_qwen2(num_hidden_layers=2, hidden_size=64, num_attention_heads=4),
                              torch.float32) == 2 * 2 * 16 * 2 * 4


def test_the_tiny_model_config_gives_the_same_figure(vlm):
    config = vlm.model.config.text_config
    assert kv_bytes_per_token(config, torch.float32) == (config.num_hidden_layers * config.num_key_value_heads
                                                         * config.hidden_size // config.num_attention_heads * 2 * 4)


def test_capacity_comes_from_the_budget_and_the_bounds():
    config = _qwen2()
    per_slot = 4096 * 12 * 1024
    capacity = plan_capacity(config, torch.bfloat16, 10 * per_slot + 5, max_sequences=64, max_context_tokens=4096)
    assert (capacity.sequences, capacity.context_tokens) == (10, 4096)
    assert capacity.tokens == 40960 and capacity.bytes == 10 * per_slot
    capped = plan_capacity(config, torch.bfloat16, 1000 * per_slot, max_sequences=64, max_context_tokens=4096)
    assert capped.sequences == 64
    short = plan_capacity(_qwen2(max_position_embeddings=1024), torch.bfloat16, per_slot, max_sequences=8,
                          max_context_tokens=4096)
    assert short.context_tokens == 1024 and short.sequences == 4
    with pytest.raises(RuntimeError, match="engine_max_context_tokens"):
        plan_capacity(config, torch.bfloat16, per_slot - 1, max_sequences=64, max_context_tokens=4096)
    with pytest.raises(ValueError):
        KVCapacity(sequences=0, context_tokens=10, bytes_per_token=1)


def test_cpu_budget_is_a_fraction_of_available_ram_after_the_reserve():
    available = psutil.virtual_memory().available
    budget = kv_memory_budget(torch.device("cpu"), memory_fraction=0.5, reserve_bytes=1024 * 1024)
    assert 0 < budget <= (available - 1024 * 1024) * 0.5 * 1.05  # RAM moves a little between the two reads
    assert kv_memory_budget(torch.device("cpu"), memory_fraction=0.5, reserve_bytes=available * 4) == 0
    with pytest.raises(ValueError):
        kv_memory_budget(torch.device("cpu"), memory_fraction=0, reserve_bytes=0)


def test_slot_rows_grow_on_demand_and_keep_what_they_hold():
    capacity = KVCapacity(sequences=5, context_tokens=8, bytes_per_token=1)
    cache = SlotKVCache(capacity, layers=2, kv_heads=1, head_dim=3, dtype=torch.float32, device=torch.device("cpu"))
    assert cache.rows_allocated == 1
    keys = torch.arange(1 * 1 * 4 * 3, dtype=torch.float32).view(1, 1, 4, 3)
    cache.write_prompt(1, 0, keys, keys + 100)
    cache.ensure_rows(3, used_context=4)
    assert cache.rows_allocated == 3
    assert torch.equal(cache.view(1, 0, 1, 4)[0], keys) and torch.equal(cache.view(1, 0, 1, 4)[1], keys + 100)
    cache.write_token(0, torch.tensor([1, 2]), torch.tensor([2, 5]), torch.ones(2, 1, 3), torch.full((2, 1, 3), 2.0))
    assert torch.equal(cache.k[0, 2, :, 5], torch.ones(1, 3))
    assert torch.equal(cache.v[0, 1, :, 2], torch.full((1, 3), 2.0))
    cache.move_row(source=0, target=2, length=4)
    assert torch.equal(cache.k[1, 2, :, :4], keys[0])
    cache.ensure_rows(5, used_context=8)
    assert cache.rows_allocated == 5
    with pytest.raises(RuntimeError):
        cache.ensure_rows(6, used_context=8)


def test_a_preallocated_cache_never_moves():
    capacity = KVCapacity(sequences=4, context_tokens=8, bytes_per_token=1)
    cache = SlotKVCache(capacity, layers=1, kv_heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"),
                        preallocate=True)
    pointer = cache.k.data_ptr()
    cache.ensure_rows(4, used_context=8)
    assert cache.rows_allocated == 4 and cache.k.data_ptr() == pointer
    assert cache.bytes_allocated == 2 * 4 * 8 * 2 * 4


def test_graph_context_buckets_cover_the_slot():
    assert context_buckets(4096) == [128, 256, 512, 1024, 2048, 4096]
    assert context_buckets(300) == [128, 256, 300]
    assert context_buckets(100) == [100]


def test_graphs_refuse_a_cpu_model(vlm):
    from fastvlm_engine.engine.fast_path import GraphedDecoder
    from fastvlm_engine.engine.runner import DecoderRunner

    config = vlm.model.config.text_config
    capacity = KVCapacity(sequences=2, context_tokens=64, bytes_per_token=kv_bytes_per_token(config, vlm.dtype))
    cache = SlotKVCache(capacity, layers=config.num_hidden_layers, kv_heads=config.num_key_value_heads,
                        head_dim=config.hidden_size // config.num_attention_heads, dtype=vlm.dtype,
                        device=vlm.device, preallocate=True)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedDecoder(DecoderRunner(vlm.model, cache), [1, 2])
