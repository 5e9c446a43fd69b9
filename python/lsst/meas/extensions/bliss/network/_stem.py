"""The space-to-depth stem computed as one strided convolution at inference.

``PixelUnshuffle(2)`` followed by a 3 x 3 convolution (``EncoderConfig.stem =
"space_to_depth"``) equals one 6 x 6 convolution of stride 2 on the
full-resolution input, with the weights rearranged: channel
``4 c + 2 dy + dx`` of the unshuffled image at ``(i, j)`` is input channel
``c`` at ``(2 i + dy, 2 j + dx)``, so the 3 x 3 weight at ``(ky, kx)`` on it
becomes the 6 x 6 weight at ``(2 ky + dy, 2 kx + dx)``, and a padding of one
unshuffled pixel becomes two pixels.  The rearranged copy of the input is
never made, which saves the rearranging pass, most of the stem's time on a
CPU, and one chunk-sized activation of memory.  The features equal the two
layers' within float32 rounding (tested).
"""

from __future__ import annotations

__all__: list[str] = []

import torch
from torch import nn


def is_foldable_stem(unshuffle: nn.Module, conv: nn.Module) -> bool:
    """Whether ``unshuffle`` then ``conv`` is a stem that `space_to_depth_conv` computes:
    ``PixelUnshuffle(2)`` and a 3 x 3 convolution of stride 1, padding 1, no dilation or groups."""
    return (
        isinstance(unshuffle, nn.PixelUnshuffle)
        and unshuffle.downscale_factor == 2
        and isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def space_to_depth_conv(conv: nn.Conv2d, pixels: torch.Tensor) -> torch.Tensor:
    """``conv(pixel_unshuffle(pixels, 2))`` as one 6 x 6 convolution of stride 2 on ``pixels``
    (B, C, H, W), H and W even: output (B, C_out, H / 2, W / 2)."""
    out_channels, in_channels = conv.out_channels, conv.in_channels // 4
    weight = (
        conv.weight.view(out_channels, in_channels, 2, 2, 3, 3)
        .permute(0, 1, 4, 2, 5, 3)
        .reshape(out_channels, in_channels, 6, 6)
    )
    return nn.functional.conv2d(pixels, weight, conv.bias, stride=2, padding=2)
