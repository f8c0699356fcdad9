"""The multimodal classifier: one encoder per modality, a fusion gate, a linear head.

    z_i = E_img(x_i),  z_t = E_txt(x_t)                         (B x h each)
    g   = sigmoid(W_g [z_i; z_t] + b_g)                         (B x h)
    h   = G(z_i, z_t) = g * z_i + (1 - g) * z_t                 (B x h, the fused representation)
    logits = W_o h + b_o                                        (B x 2)

The unlearning losses use exactly these pieces (``encode``, ``fuse``, ``head``), so Forget-MI's
multimodal losses go through the model's own trained gate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FusionNet",
    "ModelConfig",
    "TrainConfig",
    "TrainedModel",
    "build",
    "layer_groups",
    "predict_proba",
    "resolve_device",
    "state_cpu",
    "train_model",
]


@dataclass(frozen=True)
class ModelConfig:
    d_text: int
    d_image: int
    hidden: int = 64
    dropout: float = 0.1
    n_classes: int = 2


class _Encoder(nn.Module):
    def __init__(self, d_in: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc2(self.drop(torch.relu(self.fc1(x)))))


class FusionNet(nn.Module):
    """Two-encoder gated-fusion classifier (see the module docstring for the formulas)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc_img = _Encoder(cfg.d_image, cfg.hidden, cfg.dropout)
        self.enc_txt = _Encoder(cfg.d_text, cfg.hidden, cfg.dropout)
        self.gate = nn.Linear(2 * cfg.hidden, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, cfg.n_classes)

    def encode(self, xi: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unimodal embeddings ``(z_i, z_t)``, each ``B x h``."""
        return self.enc_img(xi), self.enc_txt(xt)

    def fuse(self, zi: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        """The gate ``G``: ``B x h`` fused representation."""
        g = torch.sigmoid(self.gate(torch.cat([zi, zt], dim=1)))
        return g * zi + (1.0 - g) * zt

    def forward(self, xi: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        zi, zt = self.encode(xi, xt)
        out: torch.Tensor = self.head(self.drop(self.fuse(zi, zt)))
        return out


def layer_groups(model: FusionNet) -> list[list[nn.Module]]:
    """Parameter groups from the output backwards (for CF-k / EU-k: "the last k layers")."""
    return [
        [model.head],
        [model.gate],
        [model.enc_img.fc2, model.enc_txt.fc2],
        [model.enc_img.fc1, model.enc_txt.fc1],
    ]


def resolve_device(device: str) -> torch.device:
    """``cuda`` only when asked for AND available; CPU otherwise."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.device(device)
    return torch.device("cpu")


def build(cfg: ModelConfig, state: dict[str, Any] | None = None, device: str = "cpu") -> FusionNet:
    m = FusionNet(cfg)
    if state is not None:
        m.load_state_dict(state)
    return m.to(resolve_device(device))


def state_cpu(model: nn.Module) -> dict[str, Any]:
    """A picklable CPU copy of the weights."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class TrainedModel:
    """Weights and what training them cost (picklable): ``seconds`` in wall time,
    ``cpu_seconds`` in this process's CPU time (``time.process_time``, every thread; NaN on
    models pickled before it was recorded)."""

    cfg: ModelConfig
    state: dict[str, Any]
    seconds: float
    history: list[float] = field(default_factory=list)
    cpu_seconds: float = math.nan


def _tensors(
    text: np.ndarray, image: np.ndarray, y: np.ndarray, idx: np.ndarray, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(image[idx], device=dev),
        torch.as_tensor(text[idx], device=dev),
        torch.as_tensor(y[idx], device=dev),
    )


@dataclass(frozen=True)
class TrainConfig:
    """The optimizer settings of ``train_model``."""

    lr: float
    epochs: int
    weight_decay: float
    batch_size: int


def train_model(
    cfg: ModelConfig,
    text: np.ndarray,
    image: np.ndarray,
    y: np.ndarray,
    idx: np.ndarray,
    train: TrainConfig,
    seed: int,
    device: str = "cpu",
) -> TrainedModel:
    """Train from scratch on rows ``idx`` (Adam with decoupled weight decay, cross-entropy)."""
    lr, epochs, weight_decay, batch_size = (
        train.lr,
        train.epochs,
        train.weight_decay,
        train.batch_size,
    )
    torch.manual_seed(seed)
    dev = resolve_device(device)
    t0, c0 = time.perf_counter(), time.process_time()
    model = build(cfg, device=device)
    xi, xt, yy = _tensors(text, image, y, idx, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    hist = []
    model.train()
    n = len(idx)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        tot = 0.0
        for s in range(0, n, batch_size):
            b = perm[s : s + batch_size]
            loss = loss_fn(model(xi[b], xt[b]), yy[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(b)
        hist.append(tot / max(1, n))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return TrainedModel(
        cfg, state_cpu(model), time.perf_counter() - t0, hist, time.process_time() - c0
    )


@torch.no_grad()
def predict_proba(
    cfg: ModelConfig, state: dict[str, Any], text: np.ndarray, image: np.ndarray
) -> np.ndarray:
    """Class probabilities ``n x C`` (eval mode, CPU)."""
    m = build(cfg, state)
    m.eval()
    logits = m(torch.as_tensor(image), torch.as_tensor(text))
    return torch.softmax(logits, dim=1).numpy().astype(np.float64)
