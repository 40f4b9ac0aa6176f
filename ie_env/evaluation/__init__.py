"""Evaluation on frozen features: weighted k-NN and a linear probe."""

from ie_env.evaluation.knn import knn_accuracies, knn_accuracy
from ie_env.evaluation.linear_probe import linear_probe_accuracy

__all__ = ["knn_accuracies", "knn_accuracy", "linear_probe_accuracy"]
