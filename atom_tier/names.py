"""Names that vLLM, LMCache and every atom-tier process must spell the same way.

One place for each: the connector and offloading spec vLLM's factories resolve by name, the
LMCache connectors vLLM registers itself, the KV role atom-tier asks for, and the prefix-cache
hash seed atom-tier sets when the operator left ``PYTHONHASHSEED`` unset. Imports nothing.
"""

from __future__ import annotations

from typing import Final

CONNECTOR_NAME = "AtomTierConnector"
CONNECTOR_MODULE = "atom_tier.connector.connector"
SPEC_NAME = "AtomTierOffloadingSpec"
SPEC_MODULE = "atom_tier.connector.spec"
LMCACHE_CONNECTOR = "LMCacheConnectorV1"
# LMCache's other vLLM connector (multi-process server mode); configured by its own server.
LMCACHE_CONNECTORS = (LMCACHE_CONNECTOR, "LMCacheMPConnector")
KV_ROLE: Final = "kv_both"
# Every process of a server (and every server sharing a tier) must hash prefixes alike.
HASH_SEED = "0"
