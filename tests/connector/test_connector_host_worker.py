"""The CPU host-copy worker: block mapping and real copies against the CPU KV layout.

The KV cache is built the way vLLM's CPU backend lays it out (``LBHNC``: per layer
``(num_blocks, num_kv_heads, block_size, 2 * head_size)`` bf16, all layers in one allocation)
and handed over as vLLM's offloading worker does: one int8 ``(num_blocks, page_bytes)`` view per
layer. The DRAM side is a real shared region like the one the server maps.
"""

from __future__ import annotations

import uuid

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

from atom_tier.connector.block_runs import contiguous_runs, map_blocks
from atom_tier.connector.host_worker import HostCopyWorker
from atom_tier.connector.region import AtomTierSharedRegion, region_path

NUM_BLOCKS, HEADS, BLOCK, HEAD_SIZE = 10, 2, 4, 8
PAGE = HEADS * BLOCK * 2 * HEAD_SIZE * 2  # bytes of one layer's block (bf16)


def cpu_kv_layers(num_layers: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One allocation, per-layer LBHNC tensors filled with distinct random values."""
    shape = (NUM_BLOCKS, HEADS, BLOCK, 2 * HEAD_SIZE)
    backing = torch.randn((num_layers, *shape)).to(torch.bfloat16)
    return backing, [backing[i] for i in range(num_layers)]


def canonical(layers: list[torch.Tensor], groups: list[list[int]], page_bytes: int = PAGE):
    tensors = [
        CanonicalKVCacheTensor(layer.view(torch.int8).view(NUM_BLOCKS, PAGE), PAGE)
        for layer in layers
    ]
    refs = [[CanonicalKVCacheRef(i, page_bytes) for i in group] for group in groups]
    return CanonicalKVCaches(tensors, refs)


def block_bytes(layer: torch.Tensor, block: int) -> torch.Tensor:
    return layer.view(torch.int8).view(NUM_BLOCKS, PAGE)[block].clone()


def gpu_spec(blocks: list[int], sizes: list[int], indices: list[int]) -> GPULoadStoreSpec:
    return GPULoadStoreSpec(blocks, group_sizes=sizes, block_indices=indices)


def test_map_blocks_partial_first_and_last_chunk() -> None:
    # Blocks 1..3 of a request, 2 blocks per chunk: block 1 is the 2nd half of chunk 7,
    # blocks 2-3 fill chunk 4.
    groups = map_blocks(gpu_spec([5, 6, 9], [3], [1]), np.array([7, 4]), 2)
    assert groups[0].device_blocks.tolist() == [5, 6, 9]
    assert groups[0].chunks.tolist() == [7, 4, 4]
    assert groups[0].sub_blocks.tolist() == [1, 0, 1]
    # A transfer ending early leaves the tail of its last chunk out.
    groups = map_blocks(gpu_spec([5, 6, 9], [3], [0]), np.array([7, 4]), 2)
    assert groups[0].chunks.tolist() == [7, 7, 4]
    assert groups[0].sub_blocks.tolist() == [0, 1, 0]


def test_map_blocks_several_groups() -> None:
    groups = map_blocks(gpu_spec([1, 2, 3, 8, 9], [2, 0, 3], [2, 0, 3]), np.array([0, 1, 2]), 2)
    assert [g.device_blocks.tolist() for g in groups] == [[1, 2], [], [3, 8, 9]]
    assert [g.chunks.tolist() for g in groups] == [[0, 0], [], [1, 2, 2]]
    assert [g.sub_blocks.tolist() for g in groups] == [[0, 1], [], [1, 0, 1]]


def test_map_blocks_refuses_counts_that_do_not_add_up() -> None:
    with pytest.raises(ValueError, match="DRAM chunks"):
        map_blocks(gpu_spec([1, 2, 3], [3], [0]), np.array([0]), 2)
    with pytest.raises(ValueError, match="does not add up"):
        map_blocks(gpu_spec([1, 2], [2], [0]), np.array([0, 1]), 2)


def test_contiguous_runs_join_adjacent_blocks_only() -> None:
    devices, slots = np.array([4, 5, 6, 9, 10]), np.array([0, 1, 2, 3, 5])
    assert contiguous_runs(devices, slots) == [(4, 0, 3), (9, 3, 1), (10, 5, 1)]
    assert contiguous_runs(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == []


@pytest.fixture
def region_two_layers():
    """A real shared region for 2 layers x 2 blocks per chunk, 6 chunks (rank 0 of 1); rows are
    padded to the page size as vLLM pads them."""
    engine = f"atom-tier-test-{uuid.uuid4().hex}"
    region = AtomTierSharedRegion(
        engine_id=engine,
        num_chunks=6,
        rank=0,
        kv_bytes_per_chunk=4096,
        cpu_page_size=2 * PAGE * 2,
    )
    yield region, engine
    region.cleanup()
    assert not region_path(engine).exists()


def test_store_and_load_two_layers_with_partial_chunks(region_two_layers) -> None:
    region, _ = region_two_layers
    _, layers = cpu_kv_layers(2)
    caches = canonical(layers, [[0, 1]])
    views = [region.create_next_worker_view(PAGE * 2) for _ in layers]
    for view in views:
        view.fill_(7)  # sentinel: what the transfer must not touch
    worker = HostCopyWorker(caches, views, blocks_per_chunk=2)
    expected = {
        (layer, block): block_bytes(layers[layer], block) for layer in (0, 1) for block in (2, 3, 6)
    }

    # Request blocks 1..3 (device blocks 2, 3, 6) -> 2nd half of chunk 4, all of chunk 1.
    assert worker.submit_store(11, gpu_spec([2, 3, 6], [3], [1]), CPULoadStoreSpec([4, 1]))
    for layer in (0, 1):
        rows = views[layer].view(6, 2, PAGE)
        assert torch.equal(rows[4, 1], expected[(layer, 2)])
        assert torch.equal(rows[1, 0], expected[(layer, 3)])
        assert torch.equal(rows[1, 1], expected[(layer, 6)])
        assert bool((rows[4, 0] == 7).all()), "first half of the partial chunk was written"
    [result] = worker.get_finished()
    assert (result.job_id, result.success, result.transfer_size) == (11, True, 3 * 2 * PAGE)
    assert worker.get_finished() == []

    # Load the same three blocks into other device blocks; the others stay as they were.
    untouched = {b: block_bytes(layers[0], b) for b in range(NUM_BLOCKS) if b not in (0, 8, 9)}
    assert worker.submit_load(12, CPULoadStoreSpec([4, 1]), gpu_spec([0, 8, 9], [3], [1]))
    for layer in (0, 1):
        for source, target in ((2, 0), (3, 8), (6, 9)):
            assert torch.equal(block_bytes(layers[layer], target), expected[(layer, source)])
    for block, data in untouched.items():
        assert torch.equal(block_bytes(layers[0], block), data)
    worker.shutdown()


def test_groups_and_unpadded_pages(region_two_layers) -> None:
    region, _ = region_two_layers
    _, layers = cpu_kv_layers(2)
    unpadded = PAGE - 64  # the last 64 bytes of each page are padding: never copied
    caches = canonical(layers, [[0], [1]], page_bytes=unpadded)
    views = [region.create_next_worker_view(PAGE * 2) for _ in layers]
    for view in views:
        view.zero_()
    worker = HostCopyWorker(caches, views, blocks_per_chunk=2)
    # Group 0 (layer 0): blocks 1, 4 -> chunk 0. Group 1 (layer 1): block 5 -> chunk 3, 2nd half.
    worker.submit_store(1, gpu_spec([1, 4, 5], [2, 1], [0, 1]), CPULoadStoreSpec([0, 3]))
    rows0, rows1 = views[0].view(6, 2, PAGE), views[1].view(6, 2, PAGE)
    assert torch.equal(rows0[0, 0, :unpadded], block_bytes(layers[0], 1)[:unpadded])
    assert torch.equal(rows0[0, 1, :unpadded], block_bytes(layers[0], 4)[:unpadded])
    assert torch.equal(rows1[3, 1, :unpadded], block_bytes(layers[1], 5)[:unpadded])
    assert bool((rows0[0, :, unpadded:] == 0).all()) and bool((rows1[3, 0] == 0).all())
    # Layer 1's chunk 0 and layer 0's chunk 3 belong to the other group: untouched.
    assert bool((rows1[0] == 0).all()) and bool((rows0[3] == 0).all())
    [result] = worker.get_finished()
    assert result.transfer_size == 3 * unpadded
    worker.shutdown()


def test_runs_across_consecutive_chunks() -> None:
    """Consecutive blocks into consecutive chunks: one run, split into head/whole/tail pieces."""
    _, layers = cpu_kv_layers(1)
    caches = canonical(layers, [[0]])
    host = torch.zeros((5, 2 * PAGE), dtype=torch.int8)
    worker = HostCopyWorker(caches, [host], blocks_per_chunk=2)
    worker.submit_store(3, gpu_spec([3, 4, 5, 6], [4], [1]), CPULoadStoreSpec([1, 2, 3]))
    slots = host.view(10, PAGE)
    for slot, block in zip((3, 4, 5, 6), (3, 4, 5, 6), strict=True):
        assert torch.equal(slots[slot], block_bytes(layers[0], block))
    assert bool((slots[2] == 0).all()) and bool((slots[7] == 0).all())


def test_whole_chunks_in_padded_rows_both_directions(region_two_layers) -> None:
    region, _ = region_two_layers
    _, layers = cpu_kv_layers(2)
    views = [region.create_next_worker_view(PAGE * 2) for _ in layers]
    worker = HostCopyWorker(canonical(layers, [[0, 1]]), views, blocks_per_chunk=2)
    original = {(lay, b): block_bytes(layers[lay], b) for lay in (0, 1) for b in range(6)}
    worker.submit_store(1, gpu_spec(list(range(6)), [6], [0]), CPULoadStoreSpec([1, 2, 3]))
    for layer in (0, 1):
        rows = views[layer].view(6, 2, PAGE)
        for block in range(6):
            assert torch.equal(rows[1 + block // 2, block % 2], original[(layer, block)])
    worker.submit_load(2, CPULoadStoreSpec([2, 3]), gpu_spec([6, 7, 8, 9], [4], [2]))
    for layer in (0, 1):
        for source, target in ((2, 6), (3, 7), (4, 8), (5, 9)):
            assert torch.equal(block_bytes(layers[layer], target), original[(layer, source)])
    assert [r.transfer_size for r in worker.get_finished()] == [6 * 2 * PAGE, 4 * 2 * PAGE]
    worker.shutdown()


def test_shutdown_releases_the_region(region_two_layers) -> None:
    region, engine = region_two_layers
    _, layers = cpu_kv_layers(2)
    views = [region.create_next_worker_view(PAGE * 2) for _ in layers]
    released = []
    worker = HostCopyWorker(
        canonical(layers, [[0, 1]]), views, 2, release=lambda: released.append(True)
    )
    del views
    worker.shutdown()
    worker.shutdown()
    assert released == [True]
    assert region_path(engine).exists()  # the fixture's cleanup removes it


def test_shutdown_unmaps_the_region_after_copies(region_two_layers) -> None:
    """No view of the region may outlive shutdown: the unmap fails while one exists."""
    region, _ = region_two_layers
    _, layers = cpu_kv_layers(2)
    views = [region.create_next_worker_view(PAGE * 2) for _ in layers]
    worker = HostCopyWorker(canonical(layers, [[0, 1]]), views, 2, release=region.cleanup)
    worker.submit_store(1, gpu_spec([0, 1, 2], [3], [1]), CPULoadStoreSpec([0, 1]))
    mapping = region.mmap_obj
    del views
    worker.shutdown()
    assert mapping.closed


def test_rejects_mismatched_tensors() -> None:
    _, layers = cpu_kv_layers(2)
    with pytest.raises(ValueError, match="DRAM views"):
        HostCopyWorker(
            canonical(layers, [[0, 1]]), [torch.zeros((2, 2 * PAGE), dtype=torch.int8)], 2
        )
    with pytest.raises(ValueError, match="DRAM view must be int8"):
        HostCopyWorker(canonical(layers[:1], [[0]]), [torch.zeros((2, PAGE), dtype=torch.int8)], 2)
