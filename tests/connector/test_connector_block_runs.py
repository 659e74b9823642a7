"""The copy plan of a DRAM-tier transfer (block_runs) and the layer batching of the host worker.

The Python and numpy planners must give the same runs for any transfer; ids outside either
side must be refused before any copy (the worker copies through unchecked strided views).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from vllm.v1.kv_offload.base import (
    CanonicalKVCacheRef,
    CanonicalKVCaches,
    CanonicalKVCacheTensor,
    GPULoadStoreSpec,
)
from vllm.v1.kv_offload.cpu.common import CPULoadStoreSpec

from atom_tier.connector.block_runs import (
    SMALL_TRANSFER_BLOCKS,
    _small_runs,
    contiguous_runs,
    map_blocks,
    transfer_runs,
)
from atom_tier.connector.host_worker import HostCopyWorker, stack_views


def random_transfer(rng: random.Random, per_chunk: int, max_blocks: int):
    """A transfer of 1-3 groups, each starting anywhere in a chunk, with runs and gaps."""
    sizes, indices, blocks, chunks = [], [], [], []
    next_block, next_chunk = rng.randrange(4), rng.randrange(4)
    for _ in range(rng.randint(1, 3)):
        size, first = rng.randint(0, max_blocks), rng.randrange(3 * per_chunk)
        sizes.append(size)
        indices.append(first)
        for _ in range(size):
            next_block += 1 if rng.random() < 0.7 else rng.randint(2, 5)
            blocks.append(next_block)
        if size:
            for _ in range(-(-(first % per_chunk + size) // per_chunk)):
                next_chunk += 1 if rng.random() < 0.6 else rng.randint(2, 5)
                chunks.append(next_chunk)
    return GPULoadStoreSpec(blocks, sizes, indices), np.array(chunks, dtype=np.int64)


def numpy_runs(spec: GPULoadStoreSpec, chunks: np.ndarray, per_chunk: int):
    return [
        contiguous_runs(g.device_blocks, g.chunks * per_chunk + g.sub_blocks)
        for g in map_blocks(spec, chunks, per_chunk)
    ]


@pytest.mark.parametrize("per_chunk", [1, 2, 3, 8])
def test_python_and_numpy_planners_agree(per_chunk: int) -> None:
    rng = random.Random(per_chunk)
    for _ in range(300):
        spec, chunks = random_transfer(rng, per_chunk, max_blocks=20)
        expected = numpy_runs(spec, chunks, per_chunk)
        small = _small_runs(spec, spec.block_ids.tolist(), chunks.tolist(), per_chunk)
        assert small == expected
        assert transfer_runs(spec, chunks, per_chunk, 10_000, 10_000) == expected


def test_both_planners_refuse_counts_that_do_not_add_up() -> None:
    for blocks in ([1, 2, 3], list(range(SMALL_TRANSFER_BLOCKS + 1))):
        spec = GPULoadStoreSpec(blocks, [len(blocks)], [0])
        with pytest.raises(ValueError, match="DRAM chunks"):
            transfer_runs(spec, np.array([0]), 2, 100, 100)
    spec = GPULoadStoreSpec([1, 2], [2], [0])
    with pytest.raises(ValueError, match="does not add up"):
        transfer_runs(spec, np.array([0, 1]), 2, 100, 100)


@pytest.mark.parametrize("num_blocks", [4, SMALL_TRANSFER_BLOCKS + 4])
def test_ids_outside_either_side_are_refused(num_blocks: int) -> None:
    blocks = list(range(num_blocks))
    chunks = np.arange(num_blocks // 2)
    spec = GPULoadStoreSpec(blocks, [num_blocks], [0])
    assert transfer_runs(spec, chunks, 2, num_blocks, num_blocks // 2)
    with pytest.raises(ValueError, match="device block ids out of range"):
        transfer_runs(spec, chunks, 2, num_blocks - 1, num_blocks // 2)
    with pytest.raises(ValueError, match="DRAM chunk ids out of range"):
        transfer_runs(spec, chunks, 2, num_blocks, num_blocks // 2 - 1)
    with pytest.raises(ValueError, match="DRAM chunk ids out of range"):
        transfer_runs(spec, chunks - 1, 2, num_blocks, num_blocks // 2)


def test_stack_views_only_for_evenly_spaced_arrays() -> None:
    backing = np.arange(4 * 6 * 8, dtype=np.int8).reshape(6, 4, 8)
    layers = [backing[:, i] for i in range(4)]  # interleaved rows: stride 8 bytes apart
    stacked = stack_views(layers)
    assert stacked is not None and stacked.shape == (4, 6, 8)
    for i, layer in enumerate(layers):
        assert np.array_equal(stacked[i], layer)
    assert stack_views([layers[0], layers[1], layers[3]]) is None
    # Two arrays anywhere are evenly spaced: the view touches only their own elements.
    elsewhere = np.full((6, 4, 8), 7, dtype=np.int8)[:, 0]
    pair = stack_views([layers[0], elsewhere])
    assert pair is not None and np.array_equal(pair[1], elsewhere)
    assert stack_views([layers[0], np.zeros((6, 8), dtype=np.int8)]) is None  # other strides


PAGE, NUM_BLOCKS = 64, 48


def worker_for(uneven: bool, per_chunk: int = 2, num_chunks: int = 40):
    """A 3-layer worker over one KV allocation and one DRAM region; with ``uneven`` the third
    layer sits two slots after the second, so layers 0-1 stack and layer 2 is copied alone."""
    slots = (0, 1, 3) if uneven else (0, 1, 2)
    backing = torch.randint(-128, 127, (NUM_BLOCKS, 4, PAGE), dtype=torch.int8)
    layers = [backing[:, i] for i in slots]
    rows = torch.zeros((num_chunks, 4, PAGE * per_chunk), dtype=torch.int8)
    hosts = [rows[:, i] for i in slots]
    caches = CanonicalKVCaches(
        [CanonicalKVCacheTensor(layer, PAGE) for layer in layers],
        [[CanonicalKVCacheRef(i, PAGE) for i in range(3)]],
    )
    return HostCopyWorker(caches, hosts, per_chunk), layers, hosts


@pytest.mark.parametrize("uneven", [False, True], ids=["even", "uneven"])
@pytest.mark.parametrize("num_blocks", [5, SMALL_TRANSFER_BLOCKS + 7])
def test_worker_round_trip_batched_or_not(uneven: bool, num_blocks: int) -> None:
    """Scattered chunks, a partial first chunk: store then load back into other blocks."""
    worker, layers, hosts = worker_for(uneven)
    assert [b.device.shape[0] for b in worker._group_batches[0]] == ([2, 1] if uneven else [3])
    rng = random.Random(num_blocks)
    source = (
        rng.sample(range(NUM_BLOCKS // 2), num_blocks)
        if num_blocks < 24
        else list(range(num_blocks))
    )
    num_chunks = -(-(1 + num_blocks) // 2)
    chunks = rng.sample(range(40), num_chunks)
    original = [layer.clone() for layer in layers]
    worker.submit_store(1, GPULoadStoreSpec(source, [num_blocks], [1]), CPULoadStoreSpec(chunks))
    for layer, host in zip(original, hosts, strict=True):
        slots = host.reshape(40 * 2, PAGE)
        for position, block in enumerate(source, start=1):
            slot = chunks[position // 2] * 2 + position % 2
            assert torch.equal(slots[slot], layer[block])
    for layer in layers:
        layer.zero_()
    target = list(range(NUM_BLOCKS - num_blocks, NUM_BLOCKS))
    worker.submit_load(2, CPULoadStoreSpec(chunks), GPULoadStoreSpec(target, [num_blocks], [1]))
    for layer, before in zip(layers, original, strict=True):
        for block_from, block_to in zip(source, target, strict=True):
            assert torch.equal(layer[block_to], before[block_from])
    sizes = [result.transfer_size for result in worker.get_finished()]
    assert sizes == [num_blocks * PAGE * 3] * 2


def test_out_of_range_chunk_copies_nothing() -> None:
    worker, _, hosts = worker_for(uneven=False)
    with pytest.raises(ValueError, match="DRAM chunk ids out of range"):
        worker.submit_store(1, GPULoadStoreSpec([0, 1], [2], [0]), CPULoadStoreSpec([40]))
    assert all(not host.any() for host in hosts)
    assert worker.get_finished() == []


def test_both_planners_refuse_fewer_device_blocks_than_groups_list() -> None:
    """vLLM asserts this in GPULoadStoreSpec; the planners must not rely on it (python -O)."""
    for count in (3, SMALL_TRANSFER_BLOCKS + 3):
        spec = GPULoadStoreSpec(list(range(count)), [count], [0])
        spec.group_sizes = [count + 1]
        with pytest.raises(ValueError, match="does not add up"):
            transfer_runs(spec, np.arange(count), 2, 1000, 1000)


def test_worker_without_tensors_moves_nothing() -> None:
    worker = HostCopyWorker(CanonicalKVCaches([], [[]]), [], 2)
    assert worker.submit_store(1, GPULoadStoreSpec([], [0], [0]), CPULoadStoreSpec([]))
    assert [r.transfer_size for r in worker.get_finished()] == [0]
