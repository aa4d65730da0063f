"""How a trained model does on a labelled split, class by class (confusion matrix, the digits behind each of its
cells, its mistakes), and the per-layer views Inspect draws of it: conv activations named as the receptive-field
table names them, and the learned 3x3 kernels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from core.architecture import receptive_field_table
from core.inference import feature_maps, probabilities


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

    def mistakes(self, limit: int | None = None, true: int | None = None, predicted: int | None = None) -> torch.Tensor:
        """Indices of misclassified examples, the most confidently wrong first; `true` / `predicted` keep only
        those of that true / predicted digit."""
        wrong = self.predicted != self.labels
        if true is not None:
            wrong &= self.labels == true
        if predicted is not None:
            wrong &= self.predicted == predicted
        return self._most_confident_first(torch.nonzero(wrong).flatten(), limit)

    def cell(self, true: int, predicted: int, limit: int | None = None) -> torch.Tensor:
        """Indices of the examples behind confusion[true, predicted], the most confident first."""
        found = torch.nonzero((self.labels == true) & (self.predicted == predicted)).flatten()
        return self._most_confident_first(found, limit)

    def most_confused(self) -> tuple[int, int] | None:
        """(true, predicted) of the largest off-diagonal cell (the first in reading order on a tie); None when
        nothing is misclassified."""
        off = self.confusion.clone()
        off.fill_diagonal_(0)
        if off.max() == 0:
            return None
        true, predicted = divmod(int(off.flatten().argmax()), 10)
        return true, predicted

    def _most_confident_first(self, indices: torch.Tensor, limit: int | None) -> torch.Tensor:
        order = torch.argsort(self.confidence[indices], descending=True, stable=True)
        return indices[order][:limit]


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


def layer_feature_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """core.inference.feature_maps for one input, each block named as receptive_field_table names it
    ("net.convblock1" in Model1), so that core.explain.receptive_box takes the name."""
    conv_rows = [r.name for r in receptive_field_table(model) if r.kind == "conv"]
    named = []
    for block, maps in feature_maps(model, x):
        full = next(n for n in conv_rows if n.rpartition(".")[2] == block)
        named.append((full, maps))
    return named


def first_kernels(model: nn.Module, count: int = 2, size: int = 3) -> list[tuple[str, np.ndarray]]:
    """(layer name as receptive_field_table names it, weights (out, in, size, size)) of the first `count` conv
    layers whose kernels are size x size, in forward (definition) order."""
    found = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (size, size):
            parent, _, leaf = path.rpartition(".")
            found.append((parent if leaf.isdigit() else path, module.weight.detach().cpu().numpy().copy()))
            if len(found) == count:
                break
    return found


def kernel_grid(weights: np.ndarray) -> np.ndarray:
    """(out, in, k, k) kernels -> one 2-D array to draw as a heatmap: output channel c in column block c,
    input channel r in row block r, a NaN line (drawn blank) between neighbouring kernels."""
    n_out, n_in, k, _ = weights.shape
    grid = np.full((n_in * (k + 1) - 1, n_out * (k + 1) - 1), np.nan, dtype=np.float32)
    for c in range(n_out):
        for r in range(n_in):
            grid[r * (k + 1) : r * (k + 1) + k, c * (k + 1) : c * (k + 1) + k] = weights[c, r]
    return grid


def clicked_cell(points: list[dict]) -> tuple[int, int] | None:
    """(row, column) of the first point of a plotly selection on a heatmap drawn with x = column, y = row
    (st.plotly_chart's event.selection.points); None for an empty selection."""
    for p in points:
        if p.get("x") is not None and p.get("y") is not None:
            return int(round(float(p["y"]))), int(round(float(p["x"])))
    return None
