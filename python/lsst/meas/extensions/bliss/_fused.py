"""Inference-only convolutions that fuse what follows them, on CPUs where oneDNN can.

Without autograd the backbone's activations may be overwritten, and three
patterns of it can run as fewer, larger steps:

- a convolution followed by SiLU: one oneDNN convolution with the activation
  as a post-op (``mkldnn::_convolution_pointwise``, the kernel PyTorch's own
  compiler emits for this pattern on a CPU);
- a residual block's second convolution added to the block's input: one
  convolution that accumulates into the input tensor
  (``mkldnn::_convolution_pointwise_.binary``), without a third activation
  in memory;
- the space-to-depth stem (``PixelUnshuffle(2)`` then a 3 x 3 convolution):
  one 6 x 6 convolution of stride 2 on the full-resolution input, with the
  weights rearranged, without the rearranged copy of the input.

The results equal the unfused layers' within float32 rounding (tested).  On
the 2-core CPU machine, for a 2208 x 2208 chunk, the stem took 46 ms instead
of 87 ms (rearranging 39 ms, convolution 47 ms) and a residual block at half
resolution 80 ms instead of 108 ms.  Where the oneDNN operators are missing
(other builds of torch), the activation and the sum run as separate steps and
only the stem's rearranged weights are used.
"""

from __future__ import annotations

__all__: list[str] = []

import functools

import torch
from torch import nn


@functools.cache
def _onednn_fusion_available() -> bool:
    """Whether this torch has the oneDNN convolutions with post-ops (CPU builds with mkldnn)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        namespace = torch.ops.mkldnn
        return hasattr(namespace, "_convolution_pointwise") and hasattr(namespace, "_convolution_pointwise_")
    except (AttributeError, RuntimeError):
        return False


def fusion_applies(tensor: torch.Tensor) -> bool:
    """Whether fused oneDNN convolutions may compute on ``tensor``: float32 on a CPU, with no gradient
    recorded and no autocast (whose lower precision the fused operators would bypass)."""
    return (
        tensor.device.type == "cpu"
        and tensor.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and _onednn_fusion_available()
    )


def _conv_arguments(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    padding = conv.padding
    if isinstance(padding, str):
        raise ValueError(f"fused convolutions need numeric padding, not {padding!r}.")
    return list(padding), list(conv.stride), list(conv.dilation), conv.groups


def conv_silu(conv: nn.Conv2d, inputs: torch.Tensor, fused: bool) -> torch.Tensor:
    """``silu(conv(inputs))`` for inputs (B, C_in, H, W): one oneDNN step if ``fused``, else the
    activation in place on the convolution's output."""
    if not fused:
        return nn.functional.silu(conv(inputs), inplace=True)
    padding, stride, dilation, groups = _conv_arguments(conv)
    return torch.ops.mkldnn._convolution_pointwise(
        inputs, conv.weight, conv.bias, padding, stride, dilation, groups, "swish", [], ""
    )


def conv_add_(conv: nn.Conv2d, inputs: torch.Tensor, accumulator: torch.Tensor, fused: bool) -> torch.Tensor:
    """``accumulator += conv(inputs)`` in place (shapes (B, C, H, W)); returns ``accumulator``."""
    if not fused:
        return accumulator.add_(conv(inputs))
    padding, stride, dilation, groups = _conv_arguments(conv)
    binary = torch.ops.mkldnn._convolution_pointwise_.binary
    # The binary post-op "add" with alpha 1, and no unary post-op after it.
    return binary(
        accumulator,
        inputs,
        conv.weight,
        conv.bias,
        padding,
        stride,
        dilation,
        groups,
        "add",
        1.0,
        None,
        [],
        None,
    )


def is_foldable_stem(unshuffle: nn.Module, conv: nn.Module) -> bool:
    """Whether ``unshuffle`` then ``conv`` is a space-to-depth stem that `space_to_depth_conv` computes:
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


def space_to_depth_conv(conv: nn.Conv2d, pixels: torch.Tensor, silu: bool, fused: bool) -> torch.Tensor:
    """``conv(pixel_unshuffle(pixels, 2))`` (then SiLU if ``silu``) as one 6 x 6 convolution of stride 2
    on ``pixels`` (B, C, H, W), H and W even: output (B, C_out, H / 2, W / 2).

    Channel ``4 c + 2 dy + dx`` of the unshuffled image at ``(i, j)`` is ``pixels[c, 2 i + dy, 2 j + dx]``,
    so the 3 x 3 weight at ``(ky, kx)`` on it becomes the 6 x 6 weight at ``(2 ky + dy, 2 kx + dx)`` on
    the pixels, and the padding of one unshuffled pixel becomes two pixels.
    """
    out_channels, in_channels = conv.out_channels, conv.in_channels // 4
    weight = (
        conv.weight.view(out_channels, in_channels, 2, 2, 3, 3)
        .permute(0, 1, 4, 2, 5, 3)
        .reshape(out_channels, in_channels, 6, 6)
    )
    if fused:
        attribute = "swish" if silu else "none"
        return torch.ops.mkldnn._convolution_pointwise(
            pixels, weight, conv.bias, [2, 2], [2, 2], [1, 1], 1, attribute, [], ""
        )
    outputs = nn.functional.conv2d(pixels, weight, conv.bias, stride=2, padding=2)
    return nn.functional.silu(outputs, inplace=True) if silu else outputs
