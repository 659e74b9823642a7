"""``atom-tier plan``: simulate the KV cache hierarchy over a replay's workload, before buying.

Layers: :mod:`policies` (pluggable cache policies), :mod:`workload` (the request stream the
replay would send), :mod:`simulator` (device -> DRAM -> NVMe -> shared), then the tools on top
(deployment sizing, sweep, report, metrics advice, CLI).
"""
