"""The AASIST spoofing countermeasure network, written to load the published weights.

AASIST (Jung et al., ICASSP 2022, "AASIST: Audio Anti-Spoofing using Integrated
Spectro-Temporal Graph Attention Networks", MIT licence) classifies 64 600
samples of 16 kHz speech (~4 s) as spoofed (logit 0) or bona fide (logit 1).
The pipeline:

1. a bank of fixed band-pass filters (windowed sinc, mel-spaced band edges)
   applied to the raw waveform, followed by |.|, 3x3 max pooling, batch norm;
2. six 2-D residual blocks over (filter band x time);
3. two graphs built from the encoder map: one node per frequency row (maximum
   over time, plus a learned positional embedding) and one node per time
   column (maximum over frequency); each gets a graph attention layer and
   top-k graph pooling;
4. two parallel branches of heterogeneous stacking graph attention over the
   union of both graphs plus a learned "master" node, each two layers deep,
   merged element-wise by maximum;
5. a read-out of (max |.|, mean) per node type and the master node -> 2 logits.

Attribute names follow the published state dict (``AASIST.pth``), so that
``load_state_dict(strict=True)`` is the contract between this code and the
weights. Dropout layers of the training recipe are omitted: the network is only
ever run in inference mode here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from voiceauth.audio.decode import MODEL_RATE

SAMPLE_RATE = MODEL_RATE  # the model was trained on 16 kHz audio
WINDOW_SAMPLES = 64600


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_bandpass_bank(n_filters: int, kernel_size: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Hamming-windowed ideal band-pass FIR filters with mel-spaced band edges.

    The band edges split the mel scale between 0 Hz and Nyquist (as sampled
    on a 512-point FFT grid) into ``n_filters`` equal parts. Each filter is the
    difference of two ideal low-pass (sinc) responses. Returns
    ``(n_filters, kernel_size)``; ``kernel_size`` must be odd so the filters are
    centred.
    """
    if kernel_size % 2 == 0:
        raise ValueError("kernel_size must be odd")
    fft_bins = np.linspace(0.0, 1.0, 512 // 2 + 1) * (sample_rate // 2)
    mel = _hz_to_mel(fft_bins)
    edges_hz = _mel_to_hz(np.linspace(mel.min(), mel.max(), n_filters + 1))
    half = (kernel_size - 1) / 2
    taps = np.arange(-half, half + 1)
    window = np.hamming(kernel_size)
    bank = np.empty((n_filters, kernel_size), dtype=np.float64)
    for i, (low, high) in enumerate(zip(edges_hz[:-1], edges_hz[1:], strict=True)):
        lowpass_high = (2 * high / sample_rate) * np.sinc(2 * high * taps / sample_rate)
        lowpass_low = (2 * low / sample_rate) * np.sinc(2 * low * taps / sample_rate)
        bank[i] = window * (lowpass_high - lowpass_low)
    return torch.from_numpy(bank).float()


class SincFrontEnd(nn.Module):
    """Fixed (not trained) mel-spaced sinc band-pass filtering of the raw waveform."""

    def __init__(self, n_filters: int, kernel_size: int, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        if kernel_size % 2 == 0:  # the published model rounds an even size up
            kernel_size += 1
        bank = mel_bandpass_bank(n_filters, kernel_size, sample_rate).unsqueeze(1)
        # not persistent: the filters are derived, the state dict does not hold them
        self.register_buffer("filters", bank, persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, n_filters, T - k + 1)
        return F.conv1d(wave.unsqueeze(1), self.filters)


class ResidualBlock(nn.Module):
    """Two (2, 3) convolutions with a shortcut, then max pooling by 3 along time.

    Note on fidelity: in the published model the pre-activation (``bn1`` +
    SELU) of non-first blocks is computed but its result is not what feeds
    ``conv1``: the first convolution sees the block input directly. The
    trained weights depend on that, so ``bn1`` is kept (for the state dict)
    but not applied.
    """

    def __init__(self, in_channels: int, out_channels: int, *, first: bool = False) -> None:
        super().__init__()
        if not first:
            self.bn1 = nn.BatchNorm2d(in_channels)  # loaded, unused (see class docstring)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=(2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=(2, 3), padding=(0, 1))
        if in_channels != out_channels:
            self.conv_downsample = nn.Conv2d(in_channels, out_channels, kernel_size=(1, 3), padding=(0, 1))
        else:
            self.conv_downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.selu(self.bn2(self.conv1(x)))
        y = self.conv2(y)
        shortcut = x if self.conv_downsample is None else self.conv_downsample(x)
        return F.max_pool2d(y + shortcut, (1, 3))


def _pairwise_products(nodes: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N, N, D) with entry [b, i, j] = nodes[b, i] * nodes[b, j]."""
    return nodes.unsqueeze(2) * nodes.unsqueeze(1)


def _batch_norm_nodes(bn: nn.BatchNorm1d, nodes: torch.Tensor) -> torch.Tensor:
    """Batch norm over the feature axis of (B, N, D) node features."""
    shape = nodes.shape
    return bn(nodes.reshape(-1, shape[-1])).reshape(shape)


class GraphAttention(nn.Module):
    """Fully connected graph attention over one node type.

    Attention logits come from the element-wise product of each node pair,
    projected, squashed with tanh and reduced by a learned vector, then divided
    by a temperature and normalised over neighbours. The output adds an
    attention-aggregated projection and a per-node (self) projection, followed
    by batch norm and SELU.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float) -> None:
        super().__init__()
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = nn.Parameter(torch.empty(out_dim, 1))
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.temperature = temperature
        nn.init.xavier_normal_(self.att_weight)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        logits = torch.tanh(self.att_proj(_pairwise_products(nodes))) @ self.att_weight  # (B, N, N, 1)
        weights = torch.softmax(logits.squeeze(-1) / self.temperature, dim=-1)  # over neighbours j
        mixed = self.proj_with_att(weights @ nodes) + self.proj_without_att(nodes)
        return F.selu(_batch_norm_nodes(self.bn, mixed))


class HeterogeneousGraphAttention(nn.Module):
    """Graph attention over two node types (temporal, spectral) and a master node.

    Each type is first projected into a shared space. Pair attention logits use
    a separate reduction vector for temporal-temporal, spectral-spectral and
    cross-type pairs. The master node attends over all nodes with its own
    projections and is returned without normalisation.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float) -> None:
        super().__init__()
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_projM = nn.Linear(in_dim, out_dim)
        self.att_weight11 = nn.Parameter(torch.empty(out_dim, 1))
        self.att_weight22 = nn.Parameter(torch.empty(out_dim, 1))
        self.att_weight12 = nn.Parameter(torch.empty(out_dim, 1))
        self.att_weightM = nn.Parameter(torch.empty(out_dim, 1))
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.proj_with_attM = nn.Linear(in_dim, out_dim)
        self.proj_without_attM = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.temperature = temperature
        for p in (self.att_weight11, self.att_weight22, self.att_weight12, self.att_weightM):
            nn.init.xavier_normal_(p)

    def forward(
        self, temporal: torch.Tensor, spectral: torch.Tensor, master: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_t = temporal.shape[1]
        nodes = torch.cat([self.proj_type1(temporal), self.proj_type2(spectral)], dim=1)  # (B, N, D)

        # node <-> node attention, with a reduction vector chosen by the pair's types
        hidden = torch.tanh(self.att_proj(_pairwise_products(nodes)))  # (B, N, N, out)
        n = nodes.shape[1]
        is_temporal = torch.arange(n, device=nodes.device) < n_t
        same_t = is_temporal[:, None] & is_temporal[None, :]
        same_s = ~is_temporal[:, None] & ~is_temporal[None, :]
        logits = torch.where(
            same_t,
            (hidden @ self.att_weight11).squeeze(-1),
            torch.where(same_s, (hidden @ self.att_weight22).squeeze(-1), (hidden @ self.att_weight12).squeeze(-1)),
        )
        weights = torch.softmax(logits / self.temperature, dim=-1)

        # master -> nodes attention
        master_hidden = torch.tanh(self.att_projM(nodes * master))  # (B, N, out)
        master_weights = torch.softmax((master_hidden @ self.att_weightM) / self.temperature, dim=1)  # (B, N, 1)
        new_master = self.proj_with_attM(master_weights.transpose(1, 2) @ nodes) + self.proj_without_attM(master)

        mixed = self.proj_with_att(weights @ nodes) + self.proj_without_att(nodes)
        mixed = F.selu(_batch_norm_nodes(self.bn, mixed))
        return mixed[:, :n_t], mixed[:, n_t:], new_master


class GraphPool(nn.Module):
    """Keep the top ``ratio`` of nodes by a learned sigmoid gate, scaled by that gate.

    Kept nodes are ordered by descending gate score (the order matters: the two
    branches are later merged element-wise).
    """

    def __init__(self, ratio: float, in_dim: int) -> None:
        super().__init__()
        self.ratio = ratio
        self.proj = nn.Linear(in_dim, 1)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.proj(nodes))  # (B, N, 1)
        keep = max(int(nodes.shape[1] * self.ratio), 1)
        _, idx = torch.topk(gate, keep, dim=1)
        return torch.gather(nodes * gate, 1, idx.expand(-1, -1, nodes.shape[2]))


class AASIST(nn.Module):
    """The full network: waveform (B, 64600) at 16 kHz -> logits (B, 2), [spoof, bona fide]."""

    def __init__(
        self,
        *,
        first_conv: int = 128,
        filts: Sequence = (70, (1, 32), (32, 32), (32, 64), (64, 64)),
        gat_dims: Sequence[int] = (64, 32),
        pool_ratios: Sequence[float] = (0.5, 0.7, 0.5, 0.5),
        temperatures: Sequence[float] = (2.0, 2.0, 100.0, 100.0),
    ) -> None:
        super().__init__()
        n_bands = int(filts[0])
        blocks = [tuple(filts[1]), tuple(filts[2]), tuple(filts[3]), tuple(filts[4]), tuple(filts[4]), tuple(filts[4])]
        enc_dim = blocks[-1][1]
        graph_dim, hetero_dim = int(gat_dims[0]), int(gat_dims[1])

        self.front_end = SincFrontEnd(n_bands, int(first_conv))
        self.first_bn = nn.BatchNorm2d(1)
        # each block sits in its own one-element Sequential, as in the state dict (encoder.<i>.0.*)
        self.encoder = nn.Sequential(
            *[nn.Sequential(ResidualBlock(cin, cout, first=i == 0)) for i, (cin, cout) in enumerate(blocks)]
        )
        n_freq_nodes = n_bands // 3  # after the 3x3 max pooling of the filter-band axis
        self.pos_S = nn.Parameter(torch.randn(1, n_freq_nodes, enc_dim))
        self.master1 = nn.Parameter(torch.randn(1, 1, graph_dim))
        self.master2 = nn.Parameter(torch.randn(1, 1, graph_dim))

        self.GAT_layer_S = GraphAttention(enc_dim, graph_dim, temperatures[0])
        self.GAT_layer_T = GraphAttention(enc_dim, graph_dim, temperatures[1])
        self.HtrgGAT_layer_ST11 = HeterogeneousGraphAttention(graph_dim, hetero_dim, temperatures[2])
        self.HtrgGAT_layer_ST12 = HeterogeneousGraphAttention(hetero_dim, hetero_dim, temperatures[2])
        self.HtrgGAT_layer_ST21 = HeterogeneousGraphAttention(graph_dim, hetero_dim, temperatures[2])
        self.HtrgGAT_layer_ST22 = HeterogeneousGraphAttention(hetero_dim, hetero_dim, temperatures[2])

        self.pool_S = GraphPool(pool_ratios[0], graph_dim)
        self.pool_T = GraphPool(pool_ratios[1], graph_dim)
        self.pool_hS1 = GraphPool(pool_ratios[2], hetero_dim)
        self.pool_hT1 = GraphPool(pool_ratios[2], hetero_dim)
        self.pool_hS2 = GraphPool(pool_ratios[2], hetero_dim)
        self.pool_hT2 = GraphPool(pool_ratios[2], hetero_dim)

        self.out_layer = nn.Linear(5 * hetero_dim, 2)

    @classmethod
    def from_config(cls, config: dict) -> AASIST:
        """Build from the ``model_config`` part of the published ``AASIST_config.json``."""
        keys = ("first_conv", "filts", "gat_dims", "pool_ratios", "temperatures")
        return cls(**{k: config[k] for k in keys if k in config})

    def _branch(
        self,
        temporal: torch.Tensor,
        spectral: torch.Tensor,
        master: torch.Tensor,
        layers: tuple[HeterogeneousGraphAttention, HeterogeneousGraphAttention],
        pools: tuple[GraphPool, GraphPool],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first, second = layers
        pool_t, pool_s = pools
        t, s, m = first(temporal, spectral, master)
        t, s = pool_t(t), pool_s(s)
        dt, ds, dm = second(t, s, m)
        return t + dt, s + ds, m + dm

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.readout(wave))

    def readout(self, wave: torch.Tensor) -> torch.Tensor:
        """The 160-d hidden representation the output layer reads: (B, 64600) -> (B, 160)."""
        bands = self.front_end(wave).unsqueeze(1)  # (B, 1, bands, time)
        x = F.selu(self.first_bn(F.max_pool2d(bands.abs(), (3, 3))))
        feat = self.encoder(x)  # (B, C, freq, time)

        spectral = feat.abs().amax(dim=3).transpose(1, 2) + self.pos_S  # (B, freq, C)
        spectral = self.pool_S(self.GAT_layer_S(spectral))
        temporal = feat.abs().amax(dim=2).transpose(1, 2)  # (B, time, C)
        temporal = self.pool_T(self.GAT_layer_T(temporal))

        batch = wave.shape[0]
        t1, s1, m1 = self._branch(
            temporal, spectral, self.master1.expand(batch, -1, -1),
            (self.HtrgGAT_layer_ST11, self.HtrgGAT_layer_ST12), (self.pool_hT1, self.pool_hS1),
        )
        t2, s2, m2 = self._branch(
            temporal, spectral, self.master2.expand(batch, -1, -1),
            (self.HtrgGAT_layer_ST21, self.HtrgGAT_layer_ST22), (self.pool_hT2, self.pool_hS2),
        )
        t, s, m = torch.maximum(t1, t2), torch.maximum(s1, s2), torch.maximum(m1, m2)
        return torch.cat([t.abs().amax(dim=1), t.mean(dim=1), s.abs().amax(dim=1), s.mean(dim=1), m.squeeze(1)], dim=1)


class WithReadout(nn.Module):
    """(B, 64600) -> (readout (B, 160), bona fide log-odds (B,)): what the spoof check uses."""

    def __init__(self, net: AASIST) -> None:
        super().__init__()
        self.net = net

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.net.readout(wave)
        logits = self.net.out_layer(hidden)
        return hidden, logits[:, 1] - logits[:, 0]


def load_aasist(directory: str | Path, device: str = "cpu") -> AASIST:
    """Build the network from ``AASIST_config.json`` and load ``AASIST.pth`` strictly, in eval mode.

    Both files are read from a private copy whose bytes match the pinned checksums
    (:func:`voiceauth.models.verified_copy`; else :class:`~voiceauth.errors.ModelChecksumError`).
    """
    from voiceauth import models

    with models.verified_copy(models.AASIST, directory) as private:
        config = json.loads((private / "AASIST_config.json").read_text())
        state = torch.load(private / "AASIST.pth", map_location="cpu", weights_only=True)
    config = config.get("model_config", config)
    net = AASIST.from_config(config)
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def repeat_to_length(wave: np.ndarray, length: int = WINDOW_SAMPLES) -> np.ndarray:
    """Tile a short waveform until it is ``length`` samples long (the training recipe's padding)."""
    if len(wave) >= length:
        return wave[:length]
    reps = math.ceil(length / max(len(wave), 1))
    return np.tile(wave, reps)[:length]


# -- ONNX Runtime ---------------------------------------------------------------------------------------
# On 2 CPU cores ONNX Runtime runs this network about 4x faster than torch (the first residual
# block, a 32-channel convolution over 23 x 21 490 cells, dominates both). The graph is exported
# once from the checksum-verified weights, for the fixed window length (graph pooling keeps a
# number of nodes that depends on it), and re-hashed on every load.

ONNX_OPSET = 17


def onnx_cache_path() -> Path:
    """Where the exported graph lives; the name binds it to the pinned weights."""
    from voiceauth import models

    return models.cache_root() / "onnx" / f"aasist-{models.AASIST.checksums['AASIST.pth'][:16]}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def export_onnx(directory: str | Path) -> Path:
    """Export :class:`WithReadout` of the verified weights in ``directory`` to :func:`onnx_cache_path`."""
    import hashlib
    import os
    import tempfile
    import warnings

    final = onnx_cache_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".aasist-", suffix=".onnx", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        module = WithReadout(load_aasist(directory)).eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter deprecation and tracer notes
            torch.onnx.export(module, (torch.zeros(2, WINDOW_SAMPLES),), str(tmp), dynamo=False,
                              opset_version=ONNX_OPSET, input_names=["wave"], output_names=["readout", "logodds"],
                              dynamic_axes={"wave": {0: "batch"}, "readout": {0: "batch"}, "logodds": {0: "batch"}})
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        side = tmp.with_name(tmp.name + ".sha256")
        side.write_text(f"{digest}  {final.name}\n", encoding="ascii")
        _sidecar(final).unlink(missing_ok=True)
        os.replace(tmp, final)
        os.replace(side, _sidecar(final))
    finally:
        tmp.unlink(missing_ok=True)
        _sidecar(tmp).unlink(missing_ok=True)
    return final


def onnx_session(directory: str | Path, threads: int | None = None):  # noqa: ANN201 (onnxruntime type)
    """An ONNX Runtime session of the exported graph (exported first if missing), its bytes re-hashed."""
    import hashlib
    import os

    import onnxruntime as ort

    from voiceauth import models
    from voiceauth.errors import ModelChecksumError

    path = onnx_cache_path()
    if not path.is_file() or not _sidecar(path).is_file():
        export_onnx(directory)
    else:  # the graph stands for these weights: a model directory that no longer matches its pins fails here too
        with models.verified_copy(models.AASIST, directory):
            pass
    data = path.read_bytes()
    recorded = _sidecar(path).read_text(encoding="ascii", errors="replace").split()
    if not recorded or recorded[0] != hashlib.sha256(data).hexdigest():
        raise ModelChecksumError(f"{path} does not match the sha256 recorded beside it; delete both files and "
                                 "score again to re-export it from the verified weights")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
