"""The stages' shared parts, by their homes (kept so that older imports keep working):

* :mod:`contrastive.stages.context`: the stage context, building components, placement, the plan.
* :mod:`contrastive.stages.models`: model assembly (``ContrastiveModel``, ``Classifier``).
* :mod:`contrastive.stages.evaluation`: held-out top-1/top-5.
* :mod:`contrastive.stages.records`: what ``final.pt`` holds.
* :mod:`contrastive.stages.results`: ``final.pt``, ``curves.png`` and ``results.json``.
"""

from __future__ import annotations

from contrastive.stages.context import (
    StageContext,
    StageTable,
    base_learning_rate,
    build,
    per_rank_batch,
    place,
    plan,
    view,
    wrap,
)
from contrastive.stages.evaluation import evaluate, evaluate_table, rank_eval_batches
from contrastive.stages.models import (
    Classifier,
    ContrastiveModel,
    build_classifier,
    from_record,
    record,
    truncate,
)
from contrastive.stages.records import ClassifierRecord, ComponentRecord, PretrainRecord
from contrastive.stages.results import CURVES, FINAL, RESULTS, finish, load_final, plot_curves

__all__ = [
    "CURVES",
    "FINAL",
    "RESULTS",
    "Classifier",
    "ClassifierRecord",
    "ComponentRecord",
    "ContrastiveModel",
    "PretrainRecord",
    "StageContext",
    "StageTable",
    "base_learning_rate",
    "build",
    "build_classifier",
    "evaluate",
    "evaluate_table",
    "finish",
    "from_record",
    "load_final",
    "per_rank_batch",
    "place",
    "plan",
    "plot_curves",
    "rank_eval_batches",
    "record",
    "truncate",
    "view",
    "wrap",
]
