"""The per-tile variational posterior that a pass of the encoder produces."""

from __future__ import annotations

__all__ = ["TilePosterior"]

import dataclasses

import torch


@dataclasses.dataclass
class TilePosterior:
    """Variational parameters and decided values of every tile.

    Attributes
    ----------
    params
        Raw parameters per factor name, (B, Ht, Wt, n_params): for each tile,
        those of its colour group given the decisions of earlier groups.
    values
        Decided value per factor name, (B, Ht, Wt, d) (modes or one sample).
    flux_scale_njy
        Flux unit of each image, shape (B,).
    """

    params: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    flux_scale_njy: torch.Tensor
