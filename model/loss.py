"""The training loss: mean next-token cross-entropy over the positions that are targets.

Rows of token shards hold seq_len + 1 ids; a model reads ids[:-1] and predicts ids[1:]. A position is a
target unless it is padding or masked: with a loss-mask column (instruction fine-tuning's prompt
masking, or the padding of shards whose tokenizer pads with its end-of-text token) the mask decides;
without one, every id but the pad id is a target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose weight is 1."""
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
    weights = weights.reshape(-1).to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=1.0)


def targets_and_weights(rows: torch.Tensor, pad_id: int, loss_mask: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, weights) from rows of seq_len+1 ids."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    weights = loss_mask[:, 1:].bool() if loss_mask is not None else targets != pad_id
    return inputs, targets, weights
