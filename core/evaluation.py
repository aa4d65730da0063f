"""How a trained model does on a labelled split, class by class: confusion matrix and its mistakes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from core.inference import probabilities


@dataclass
class Evaluation:
    confusion: torch.Tensor  # (10, 10) int64, rows = true digit, columns = predicted digit
    predicted: torch.Tensor  # (N,) int64
    confidence: torch.Tensor  # (N,) probability of the predicted digit
    labels: torch.Tensor  # (N,) int64

    @property
    def accuracy(self) -> float:
        """Percent correct over the whole split."""
        return 100.0 * self.confusion.diag().sum().item() / max(1, self.confusion.sum().item())

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        """(10,) percent correct for each true digit (nan for a digit absent from the split)."""
        totals = self.confusion.sum(1).double()
        return 100.0 * self.confusion.diag().double() / totals

    def mistakes(self, limit: int | None = None) -> torch.Tensor:
        """Indices of misclassified examples, the most confidently wrong first."""
        wrong = torch.nonzero(self.predicted != self.labels).flatten()
        order = torch.argsort(self.confidence[wrong], descending=True)
        return wrong[order][:limit]


def evaluate_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> Evaluation:
    """Run the model over (x (N, 1, 28, 28), y (N,)) in no-grad batches and tabulate the results."""
    preds, confs = [], []
    for i in range(0, len(y), batch_size):
        p = torch.from_numpy(probabilities(model, x[i : i + batch_size]))
        conf, pred = p.max(1)
        preds.append(pred)
        confs.append(conf)
    predicted, confidence = torch.cat(preds), torch.cat(confs)
    labels = y.cpu().long()
    confusion = torch.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)
    return Evaluation(confusion, predicted, confidence, labels)
