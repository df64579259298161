"""A mirror list run on a Dask cluster: ``pip install 'bgtransfer[cluster]'``.

The list is cut into shards with ids that follow from the list (``_shards``); each
shard is a Dask task that mirrors it with the engine of the worker's own process,
its operations in a state directory local to the worker (``_task``); what is done
lives in the destination, which every worker must see, and every commit there can
happen twice (``_ledger``).  ``bgtransfer mirror --cluster`` is the command line of
``mirror`` (``_cli``).  Dask is imported when a mirror runs, never by the engine.
"""

from __future__ import annotations

from engine.cluster._client import Report, mirror
from engine.cluster._shards import Shard, cut

__all__ = ["Report", "Shard", "cut", "mirror"]
