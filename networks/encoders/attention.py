"""GOAE's latent cross-attention block: latent queries attend to image tokens.

A DETR decoder layer without the self-attention half (GOAE `models/attention.py::CrossAttention`):

    t   = LN(q + Dropout(MHA(q, kv, kv)))
    out = t + Dropout(W2 · Dropout(ReLU(W1 · t)))

Facts matched to the authors' released weights: the LayerNorm has NO affine parameters, there is
no positional encoding and no final norm, and the output of the feed-forward residual is not
normalised (post-norm only after attention). The authors also define an unused `norm1`; it has no
parameters, so leaving it out changes neither the computation nor the state-dict keys.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class LatentCrossAttention(nn.Module):
    """Cross-attention from `queries` [N, Q, width] to `memory` [N, T, width]; returns [N, Q, width]."""

    def __init__(self, width: int, num_heads: int, feedforward_dim: int, dropout: float) -> None:
        super().__init__()
        if width % num_heads != 0:
            raise ValueError(f"LatentCrossAttention: width {width} is not divisible by num_heads {num_heads}")
        # nn.MultiheadAttention keeps the packed in_proj layout of the authors' weights (in_proj_weight
        # [3*width, width], in_proj_bias, out_proj), so the released checkpoint maps 1:1.
        self.attention = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.feedforward_in = nn.Linear(width, feedforward_dim)
        self.feedforward_dropout = nn.Dropout(dropout)
        self.feedforward_out = nn.Linear(feedforward_dim, width)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        attended = self.attention(query=queries, key=memory, value=memory, need_weights=False)[0]
        hidden = self.norm(queries + self.attention_dropout(attended))
        feedforward = self.feedforward_out(
            self.feedforward_dropout(functional.relu(self.feedforward_in(hidden)))
        )
        return hidden + self.output_dropout(feedforward)
