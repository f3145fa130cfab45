"""Evaluation: task readers, metrics, learners, the embedding cache and the side-by-side harness."""

from .cache import EmbeddingCache
from .harness import TASKS, EvalOptions, EvalRow, format_table, plot_length_sweep, run_evaluation
from .metrics import accuracy, macro_f1, mrr_at_k, ndcg_at_k, recall_at_k, spearman, v_measure
from .tasks import StsPairs, load_beir, load_classification, load_clustering, load_loco, load_sts

__all__ = [
    "TASKS",
    "EmbeddingCache",
    "EvalOptions",
    "EvalRow",
    "StsPairs",
    "accuracy",
    "format_table",
    "load_beir",
    "load_classification",
    "load_clustering",
    "load_loco",
    "load_sts",
    "macro_f1",
    "mrr_at_k",
    "ndcg_at_k",
    "plot_length_sweep",
    "recall_at_k",
    "run_evaluation",
    "spearman",
    "v_measure",
]
