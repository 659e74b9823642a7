"""vLLM glue for atom-tier's tiered KV cache (engine ``native``).

``register_connector()`` (called by atom-tier's general plugin in every vLLM process) makes
``{"kv_connector": "AtomTierConnector", "kv_role": "kv_both"}`` resolve by name. It imports
only vLLM's registries; the connector itself loads when vLLM first asks for it.

Layout, following vLLM's own offloading split:

* scheduler side (bookkeeping): :mod:`.manager` wraps vLLM's tiering manager;
* worker side (transfers): vLLM's worker on GPU platforms, :mod:`.host_worker` on CPU;
* :mod:`.spec` ties them together, :mod:`.config` turns settings into its configuration,
  :mod:`.region` removes the /dev/shm file vLLM leaves behind, :mod:`.metrics` adds per-tier
  counters, :mod:`.connector` is the class vLLM instantiates.
"""

from __future__ import annotations

from typing import Any

from atom_tier.names import CONNECTOR_MODULE, CONNECTOR_NAME, SPEC_MODULE, SPEC_NAME


def register_connector() -> None:
    """Register ``AtomTierConnector`` (and its offloading spec) with vLLM; safe to repeat."""
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.v1.kv_offload.factory import OffloadingSpecFactory

    registrations = (
        (KVConnectorFactory.register_connector, CONNECTOR_NAME, CONNECTOR_MODULE),
        (OffloadingSpecFactory.register_spec, SPEC_NAME, SPEC_MODULE),
    )
    for register, name, module in registrations:
        try:
            register(name, module, name)
        except ValueError:
            pass  # "already registered": a second call in the same process


def __getattr__(name: str) -> Any:
    # `kv_connector_module_path: "atom_tier.connector"` also finds the class, lazily.
    if name == CONNECTOR_NAME:
        from atom_tier.connector.connector import AtomTierConnector

        return AtomTierConnector
    raise AttributeError(name)
