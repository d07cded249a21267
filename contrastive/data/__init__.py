"""The data layer: WebDataset tar shards, their index, subsets, the digits demo set and the pipeline.

Modules (imported on demand; only :mod:`contrastive.data.skips` is imported here, so that importing
this package stays cheap):

- :mod:`~contrastive.data.index`: the ``index.json`` a shard set carries (shards, counts, classes).
- :mod:`~contrastive.data.tario`: reading and writing tar shards, one sample per key.
- :mod:`~contrastive.data.shards`: writing a whole shard set atomically and resumably.
- :mod:`~contrastive.data.imagefolder`: ``shards build imagefolder``.
- :mod:`~contrastive.data.scan`: ``shards index`` for shard sets made elsewhere.
- :mod:`~contrastive.data.subsets`: ``shards subset`` (published lists, per class, fraction).
- :mod:`~contrastive.data.digits`: the embedded scikit-learn digits demo set.
- :mod:`~contrastive.data.plan`: which samples each (rank, worker) reads.
- :mod:`~contrastive.data.pipeline`: the :class:`~contrastive.interfaces.DataSource` over shards.
- :mod:`~contrastive.data.sources`: resolving URLs, indexes and the digits cache into a source.
"""

from __future__ import annotations

from contrastive.data.skips import check_skipped

__all__ = ["check_skipped"]
