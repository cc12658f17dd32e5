"""The CAM++ speaker network in PyTorch, and strict loading of its published weights.

CAM++ (Wang et al., "CAM++: A Fast and Efficient Network for Speaker Verification Using
Context-Aware Masking", Interspeech 2023, arXiv 2303.00332; 3D-Speaker, Apache-2.0):

* a front-end convolution module (FCM): 2-D residual blocks over (frequency, time) that halve the
  frequency axis three times (80 -> 10 bins, 32 channels, flattened to 320);
* a stride-2 TDNN layer (320 -> 128 channels, half the frame rate);
* three densely connected TDNN blocks (12, 24 and 16 layers; growth 32; dilation 1, 2, 2), each layer
  a bottleneck (BN-ReLU, 1x1 conv to 128, BN-ReLU) followed by context-aware masking: a local
  convolution gated by a sigmoid mask computed from utterance- and segment-level (100-frame) means;
  a transition layer after each block halves the channels;
* statistics pooling (mean and standard deviation over time) and a 1024 -> 192 dense layer with a
  non-affine batch norm.

Input: ``(batch, frames, 80)`` mean-normalised Kaldi filterbanks (:func:`voiceauth.embedding.fbank.kaldi_fbank`).
Output: ``(batch, 192)`` embeddings (not normalised). Module names follow the published
checkpoint so that :func:`load_campplus` can match every key.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from voiceauth.errors import ModelError

EMBEDDING_DIM = 192
SEGMENT_FRAMES = 100


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels), relu=nn.ReLU()))


class _ResBlock2d(nn.Module):
    """Two 3x3 convolutions with a skip connection; ``stride`` subsamples frequency only."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class _FrontEnd(nn.Module):
    """FCM: (B, F, T) filterbanks -> (B, 32 * F / 8, T) features."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(_ResBlock2d(channels, 2), _ResBlock2d(channels, 1))
        self.layer2 = nn.Sequential(_ResBlock2d(channels, 2), _ResBlock2d(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        y = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(y)))))
        return y.flatten(1, 2)


class _Tdnn(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


def segment_means(x: torch.Tensor, length: int = SEGMENT_FRAMES) -> torch.Tensor:
    """``(batch, channels, segments)``: the mean of each ``length``-frame segment (the last may be shorter)."""
    return F.avg_pool1d(x, kernel_size=length, stride=length, ceil_mode=True)


def expand_segments(values: torch.Tensor, frames: int, length: int = SEGMENT_FRAMES) -> torch.Tensor:
    """Per-segment ``values`` repeated over the ``length`` frames of their segment, cut to ``frames``."""
    return F.interpolate(values, scale_factor=float(length), mode="nearest")[..., :frames]


class _ContextMask(nn.Module):
    """Context-aware masking: a local convolution scaled by a mask predicted from context.

    The context of a frame is the utterance mean plus the mean of its 100-frame segment, so it is
    constant over a segment; the mask's layers act frame by frame, so the mask is computed once
    a segment and then repeated over its frames (the same values as computing it at every frame,
    at a fraction of the cost: 52 of these run per embedding).
    """

    def __init__(self, channels: int, out_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        padding = kernel // 2 * dilation
        self.linear_local = nn.Conv1d(channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(channels, channels // 2, 1)
        self.linear2 = nn.Conv1d(channels // 2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(dim=-1, keepdim=True) + segment_means(x)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * expand_segments(mask, x.shape[-1])


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int, bottleneck: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bottleneck, 1, bias=False)
        self.nonlinear2 = _bn_relu(bottleneck)
        self.cam_layer = _ContextMask(bottleneck, growth, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _DenseBlock(nn.Module):
    """``layers`` dense layers; each one's output is appended to its input along channels."""

    def __init__(self, layers: int, in_channels: int, growth: int, kernel: int, dilation: int) -> None:
        super().__init__()
        for i in range(layers):
            layer = _DenseLayer(in_channels + i * growth, growth, 4 * growth, kernel, dilation)
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _Transit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class _Embedding(nn.Module):
    """1x1 projection followed by a batch norm without scale or shift."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(out_channels, affine=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)


def _mean_and_std(x: torch.Tensor) -> torch.Tensor:
    """Statistics pooling over time: mean and unbiased standard deviation, concatenated.

    Written out rather than ``Tensor.std`` because the TorchScript ONNX exporter gets the rank of
    ``std``'s output wrong.
    """
    mean = x.mean(dim=2)
    var = (x - mean.unsqueeze(2)).pow(2).sum(dim=2) / (x.shape[2] - 1)
    return torch.cat([mean, var.sqrt()], dim=1)


class _XVector(nn.Module):
    BLOCKS = ((12, 1), (24, 2), (16, 2))
    """(layers, dilation) of each dense block; every block uses kernel 3."""

    def __init__(self, in_channels: int, channels: int = 128, growth: int = 32) -> None:
        super().__init__()
        self.tdnn = _Tdnn(in_channels, channels, 5, stride=2)
        for i, (layers, dilation) in enumerate(self.BLOCKS, start=1):
            self.add_module(f"block{i}", _DenseBlock(layers, channels, growth, 3, dilation))
            channels += layers * growth
            self.add_module(f"transit{i}", _Transit(channels, channels // 2))
            channels //= 2
        self.out_nonlinear = _bn_relu(channels)
        self.dense = _Embedding(2 * channels, EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tdnn(x)
        for i in range(1, len(self.BLOCKS) + 1):
            x = getattr(self, f"transit{i}")(getattr(self, f"block{i}")(x))
        x = self.out_nonlinear(x)
        return self.dense(_mean_and_std(x))


class CamPlusPlus(nn.Module):
    """CAM++: ``(batch, frames, 80)`` filterbanks -> ``(batch, 192)`` speaker embeddings."""

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.head = _FrontEnd()
        self.xvector = _XVector(32 * (n_mels // 8))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.xvector(self.head(feats.transpose(1, 2)))


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`ModelError` unless ``state`` has exactly ``model``'s keys with equal shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or reshaped:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", reshaped)) if keys]
        raise ModelError(
            f"{source} does not fit the {type(model).__name__} network ({'; '.join(parts)}); "
            "it is another model or a damaged file: delete it and run `voiceauth models pull`"
        )


def load_campplus(checkpoint: str | os.PathLike[str]) -> CamPlusPlus:
    """Build CAM++ in eval mode from a checksum-verified checkpoint, matching every key strictly."""
    path = Path(checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of every kind
        raise ModelError(
            f"cannot read the CAM++ checkpoint {path} ({type(exc).__name__}); "
            "delete it and run `voiceauth models pull`"
        ) from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path} is not a state dict; delete it and run `voiceauth models pull`")
    model = CamPlusPlus()
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()
