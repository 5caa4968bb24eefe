"""Probes on flattened query outputs, and their training as the study describes it: AdamW with weight
decay 0.01, 10% linear warm-up then linear decay, batches of 128, early stopping on the validation
metric, and the best validation state evaluated on test."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .boxes import accuracy_at, box_loss

TASKS = {"refcocog": "box", "rcm": "binary", "vsr": "binary"}
PROBES = ("linear", "mlp2", "mlp4")


class SwiGLU(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d_in, d_hidden), nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def build_probe(kind: str, d_in: int, d_out: int, hidden: int = 512) -> nn.Module:
    """``linear``; ``mlp2``: one SwiGLU block (in -> hidden -> out); ``mlp4``: three blocks and an output layer."""
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "mlp2":
        return SwiGLU(d_in, hidden, d_out)
    if kind == "mlp4":
        return nn.Sequential(SwiGLU(d_in, hidden, hidden), SwiGLU(hidden, hidden, hidden), nn.Linear(hidden, d_out))
    raise ValueError(f"unknown probe {kind!r}; choose one of {', '.join(PROBES)}")


@dataclass
class TrainConfig:
    task: str
    probe: str = "linear"
    lr: float = 1e-4
    epochs: int = 10
    batch_size: int = 128
    weight_decay: float = 0.01
    warmup: float = 0.1
    patience: int | None = None  # epochs without a better validation metric before stopping (RCM: 10)
    giou_weight: float = 1.0
    l1_weight: float = 1.0
    hidden: int = 512
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.probe not in PROBES:
            raise ValueError(f"unknown probe {self.probe!r}; choose one of {', '.join(PROBES)}")
        self._check()

    def _check(self) -> None:
        """The numeric options, refused in words (named as the command line spells them) before any training."""
        for name, what in (
            ("epochs", "the number of passes over the training split"),
            ("batch_size", "the number of items a step"),
            ("hidden", "the probe's hidden width"),
        ):
            if not _whole(getattr(self, name), 1):
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: give {what}, at least 1")
        if self.patience is not None and not _whole(self.patience, 1):
            raise ValueError(f"--patience {self.patience}: give the number of epochs without a better validation "
                             "metric before stopping, at least 1 (or omit --patience: no early stopping)")  # fmt: skip
        if not (_real(self.lr) and self.lr > 0):
            raise ValueError(f"--lr {self.lr}: the learning rate must be above 0 (the study searches 1e-5 to 5e-4)")
        for name in ("giou_weight", "l1_weight", "weight_decay"):
            if not (_real(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: give a number of at least 0")
        if not (_real(self.warmup) and 0 <= self.warmup <= 1):
            raise ValueError(f"warmup {self.warmup}: give the fraction of the steps that warm up, in [0, 1]")


def _whole(value, least: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def _real(value) -> bool:
    """A finite number (not a bool)."""
    try:
        return not isinstance(value, bool) and math.isfinite(value)
    except TypeError:
        return False


@dataclass
class TrainResult:
    best_val: float
    test: float | None
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)


def _loss_and_metric(task: str, cfg: TrainConfig):
    if TASKS[task] == "box":

        def loss(out, y):
            return box_loss(out.sigmoid(), y, cfg.giou_weight, cfg.l1_weight)

        def metric(out, y):
            return accuracy_at(out.sigmoid(), y, 0.5)

        return loss, metric, 4

    def bce(out, y):
        return nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), y.float())

    def acc(out, y):
        return ((out.squeeze(-1) > 0).long() == y.long()).float().mean().item()

    return bce, acc, 1


def train_probe(
    features: Callable[[torch.Tensor, bool], torch.Tensor] | torch.Tensor, targets: torch.Tensor, splits: dict,
    cfg: TrainConfig, extra_parameters: list[nn.Parameter] | None = None, progress: bool = True,
) -> tuple[nn.Module, TrainResult]:  # fmt: skip
    """Train a probe. ``features`` is an ``(n, d)`` tensor (frozen, cached features) or a function of
    (indices, training) returning them (joint fine-tuning: the resampler's ``extra_parameters`` train
    too). ``splits`` maps train/val/test to index tensors."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    get = features if callable(features) else (lambda idx, training: features[idx])
    loss_fn, metric_fn, d_out = _loss_and_metric(cfg.task, cfg)
    train_idx = splits["train"]
    d_in = get(train_idx[:1], False).shape[-1]
    probe = build_probe(cfg.probe, d_in, d_out, cfg.hidden).to(cfg.device)
    params = list(probe.parameters()) + list(extra_parameters or [])
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total, warm = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup * cfg.epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    generator = torch.Generator().manual_seed(cfg.seed)

    def evaluate(idx) -> float:
        probe.eval()
        outs = []
        with torch.no_grad():
            for i in range(0, len(idx), 512):
                outs.append(probe(get(idx[i : i + 512], False).to(cfg.device)))
        probe.train()
        return metric_fn(torch.cat(outs), targets[idx].to(cfg.device))

    best, best_state, best_epoch, history, stale = -math.inf, None, -1, [], 0
    bar = tqdm(range(cfg.epochs), desc=f"{cfg.task} {cfg.probe}", disable=not progress)
    for epoch in bar:
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        running = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = loss_fn(probe(get(idx, True).to(cfg.device)), targets[idx].to(cfg.device))
            loss.backward()
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            running += loss.item() * len(idx)
        val = evaluate(splits["val"])
        history.append({"epoch": epoch, "train_loss": running / len(order), "val": val})
        bar.set_postfix(val=f"{val:.3f}")
        if val > best:
            best, best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy(probe.state_dict())
            best_extra = [p.detach().clone() for p in extra_parameters or []]
        else:
            stale += 1
            if cfg.patience is not None and stale >= cfg.patience:
                break
    if best_state is None:  # no epoch gave a validation metric (epochs < 1 is refused by TrainConfig)
        raise RuntimeError(f"no validation metric in {len(history)} epoch(s): {history[-1:] or 'no epoch ran'}")
    probe.load_state_dict(best_state)
    with torch.no_grad():  # joint fine-tuning: the resampler goes back to its best validation state too
        for p, saved in zip(extra_parameters or [], best_extra, strict=True):
            p.copy_(saved)
    test = evaluate(splits["test"]) if len(splits.get("test", [])) else None
    return probe, TrainResult(best, test, best_epoch, len(history), history)
