"""Which copies a DRAM-tier transfer makes: runs of blocks contiguous on both sides.

A transfer lists device blocks group by group (``GPULoadStoreSpec``) and the DRAM chunks they
go to or come from; the worker copies one run at a time, so fewer, longer runs mean fewer
copy calls. Two implementations give the same runs: plain Python for the short transfers of
ordinary prompts (numpy's per-call cost is larger than the work there) and numpy for long
ones. Block and chunk ids are checked against the sizes of both sides here, because the
worker's copies go through unchecked strided views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vllm.v1.kv_offload.base import GPULoadStoreSpec

# (device block, DRAM slot = chunk * blocks_per_chunk + sub-block, number of blocks)
Run = tuple[int, int, int]

# Up to this many device blocks per transfer the Python path is faster: 4 blocks ~2 us
# against ~17 us with numpy, about even at 32 (measured on the development VM).
SMALL_TRANSFER_BLOCKS = 32


@dataclass(frozen=True)
class GroupSlots:
    """Where one KV-cache group's blocks go: device block ``i`` <-> DRAM (chunk, sub-block)."""

    device_blocks: np.ndarray
    chunks: np.ndarray
    sub_blocks: np.ndarray


def map_blocks(
    device_spec: GPULoadStoreSpec, chunk_ids: np.ndarray, blocks_per_chunk: int
) -> list[GroupSlots]:
    """Pair every device block of a transfer with its DRAM chunk and sub-block, group by group.

    Device block ids are listed group after group (``group_sizes``); ``block_indices[g]`` is the
    position inside the request of group g's first block, so a transfer that starts in the
    middle of a chunk skips ``block_indices[g] % blocks_per_chunk`` sub-blocks of its first
    chunk, and one that ends early leaves the tail of its last chunk untouched.
    """
    device_blocks = np.asarray(device_spec.block_ids, dtype=np.int64)
    chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
    groups: list[GroupSlots] = []
    device_offset = 0
    chunk_offset = 0
    for size, first_index in zip(device_spec.group_sizes, device_spec.block_indices, strict=True):
        size = int(size)
        if size == 0:
            groups.append(GroupSlots(*(np.empty(0, dtype=np.int64),) * 3))
            continue
        skip = int(first_index) % blocks_per_chunk
        positions = np.arange(skip, skip + size, dtype=np.int64)
        num_chunks = -(-(skip + size) // blocks_per_chunk)
        group_chunks = chunk_ids[chunk_offset : chunk_offset + num_chunks]
        if len(group_chunks) != num_chunks:
            raise _count_error(device_spec, len(chunk_ids))
        groups.append(
            GroupSlots(
                device_blocks=device_blocks[device_offset : device_offset + size],
                chunks=group_chunks[positions // blocks_per_chunk],
                sub_blocks=positions % blocks_per_chunk,
            )
        )
        device_offset += size
        chunk_offset += num_chunks
    if device_offset != len(device_blocks) or chunk_offset != len(chunk_ids):
        raise _sum_error(len(device_blocks), len(chunk_ids), device_offset, chunk_offset)
    return groups


def contiguous_runs(device_blocks: np.ndarray, slots: np.ndarray) -> list[tuple[int, int, int]]:
    """(device start, slot start, length) runs where both sides advance one block at a time.

    ``slots`` are logical DRAM positions (``chunk * blocks_per_chunk + sub_block``), so a run
    continues into the next chunk only when that chunk's id is the next one. One copy per run
    instead of one per block keeps per-call overhead out of the bandwidth.
    """
    if len(device_blocks) == 0:
        return []
    breaks = (np.diff(device_blocks) != 1) | (np.diff(slots) != 1)
    starts = np.concatenate(([0], np.flatnonzero(breaks) + 1))
    ends = np.concatenate((starts[1:], [len(device_blocks)]))
    return [
        (int(device_blocks[s]), int(slots[s]), int(e - s))
        for s, e in zip(starts, ends, strict=True)
    ]


def _count_error(device_spec: GPULoadStoreSpec, num_chunk_ids: int) -> ValueError:
    return ValueError(
        f"transfer lists {num_chunk_ids} DRAM chunks, fewer than its "
        f"{len(device_spec.group_sizes)} group(s) of device blocks need"
    )


def _sum_error(blocks: int, chunks: int, used_blocks: int, used_chunks: int) -> ValueError:
    return ValueError(
        f"transfer does not add up: {blocks} device blocks and {chunks} DRAM chunks, "
        f"mapping used {used_blocks} and {used_chunks}"
    )


def _check_ids(kind: str, low: int, high: int, limit: int) -> None:
    if low < 0 or high >= limit:
        raise ValueError(f"{kind} ids out of range: {low}..{high}, valid 0..{limit - 1}")


def _small_runs(
    device_spec: GPULoadStoreSpec, blocks: list[int], chunks: list[int], blocks_per_chunk: int
) -> list[list[Run]]:
    """The runs of :func:`map_blocks` + :func:`contiguous_runs`, in plain Python."""
    groups: list[list[Run]] = []
    device_offset = chunk_offset = 0
    for size, first_index in zip(device_spec.group_sizes, device_spec.block_indices, strict=True):
        size = int(size)
        runs: list[Run] = []
        if size:
            skip = int(first_index) % blocks_per_chunk
            num_chunks = -(-(skip + size) // blocks_per_chunk)
            if chunk_offset + num_chunks > len(chunks):
                raise _count_error(device_spec, len(chunks))
            last_device = last_slot = -2
            for position in range(skip, skip + size):
                device = blocks[device_offset + position - skip]
                chunk, sub = divmod(position, blocks_per_chunk)
                slot = chunks[chunk_offset + chunk] * blocks_per_chunk + sub
                if device == last_device + 1 and slot == last_slot + 1:
                    first_device, first_slot, length = runs[-1]
                    runs[-1] = (first_device, first_slot, length + 1)
                else:
                    runs.append((device, slot, 1))
                last_device, last_slot = device, slot
            device_offset += size
            chunk_offset += num_chunks
        groups.append(runs)
    if device_offset != len(blocks) or chunk_offset != len(chunks):
        raise _sum_error(len(blocks), len(chunks), device_offset, chunk_offset)
    return groups


def transfer_runs(
    device_spec: GPULoadStoreSpec,
    chunk_ids: np.ndarray,
    blocks_per_chunk: int,
    num_device_blocks: int,
    num_dram_chunks: int,
) -> list[list[Run]]:
    """Per KV-cache group, the runs to copy; ids are checked against both sides' sizes."""
    block_array, chunk_array = np.asarray(device_spec.block_ids), np.asarray(chunk_ids)
    # vLLM asserts this in GPULoadStoreSpec; checked again because asserts may be off (-O).
    listed = sum(int(size) for size in device_spec.group_sizes)
    if listed != len(block_array):
        raise ValueError(
            f"transfer does not add up: {len(block_array)} device blocks, its groups list {listed}"
        )
    if len(block_array) <= SMALL_TRANSFER_BLOCKS:
        blocks, chunks = block_array.tolist(), chunk_array.tolist()
        if blocks:
            _check_ids("device block", min(blocks), max(blocks), num_device_blocks)
        if chunks:
            _check_ids("DRAM chunk", min(chunks), max(chunks), num_dram_chunks)
        return _small_runs(device_spec, blocks, chunks, blocks_per_chunk)
    _check_ids("device block", int(block_array.min()), int(block_array.max()), num_device_blocks)
    if len(chunk_array):
        _check_ids("DRAM chunk", int(chunk_array.min()), int(chunk_array.max()), num_dram_chunks)
    return [
        contiguous_runs(group.device_blocks, group.chunks * blocks_per_chunk + group.sub_blocks)
        for group in map_blocks(device_spec, chunk_array, blocks_per_chunk)
    ]
