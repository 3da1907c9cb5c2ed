"""A site's local work: encode its examples, train for E steps/epochs, evaluate on held-out rows.

Pure torch, no Flower: the ClientApp wires these to messages, and tests call them directly
(e.g. one site under FedAvg vs centralized training with the same functions).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from orchestrator.contract.metrics import classification_metrics, perplexity
from orchestrator.contract.task import SiteTask


@dataclass
class Encoded:
    """Token ids, attention mask and (classification) label ids of a set of examples."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, idx: torch.Tensor) -> Encoded:
        return Encoded(
            self.input_ids[idx],
            self.attention_mask[idx],
            None if self.labels is None else self.labels[idx],
        )

    def to(self, device: torch.device) -> Encoded:
        """The same rows on ``device`` (a no-op on CPU)."""
        return Encoded(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            None if self.labels is None else self.labels.to(device, non_blocking=True),
        )


def site_device(requested: str | None = None) -> torch.device:
    """Where this site trains: node config ``device`` if given (``cpu``, ``cuda``, ``cuda:1``),
    else its GPU when it has one. Under simulation Ray shows an actor only the GPUs it reserved
    (``federation.gpus_per_site``), so a site without a share sees none and stays on CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"node config device={requested!r}, but this site has no CUDA GPU")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that supports it; nothing elsewhere (the CPU path stays fp32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    labels: Sequence[str] | None = None,
    label_names: Sequence[str] = (),
) -> Encoded:
    """Tokenize (truncate + right-pad to ``max_length``) and map class names to ids."""
    enc = tokenizer(
        list(texts),
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    label_ids = None
    if labels is not None:
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ValueError(
                f"labels {unknown[:5]} are not among the federation's classes {list(label_names)}"
            )
        label_ids = torch.tensor([index[x] for x in labels], dtype=torch.long)
    return Encoded(enc["input_ids"], enc["attention_mask"], label_ids)


def batch_order(
    n: int, batch_size: int, seed: int, steps: int | None, epochs: int
) -> Iterator[torch.Tensor]:
    """Index batches: shuffled epochs from a seeded generator; ``steps`` cycles epochs as needed."""
    if n < 1:
        raise ValueError("no training examples: this site has 0 usable rows")
    g = torch.Generator().manual_seed(seed)
    per_epoch = max(1, math.ceil(n / batch_size))
    total = steps if steps is not None else epochs * per_epoch
    done = 0
    while done < total:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            if done == total:
                return
            yield perm[start : start + batch_size]
            done += 1


def task_loss(
    model: torch.nn.Module, batch: Encoded, task: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and logits of one batch, computed on the model's device."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    with autocast(device):
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits.float()  # losses and metrics in fp32 (a no-op without autocast)
    if task == "classification":
        assert batch.labels is not None
        return F.cross_entropy(logits, batch.labels), logits
    # Next-token loss; padded positions are masked via the attention mask, so a tokenizer whose
    # pad token equals its EOS token still trains on real EOS tokens.
    targets = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1), ignore_index=-100
    )
    return loss, logits


def proximal_term(
    params: Mapping[str, torch.Tensor], global_params: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx: ``mu/2 * sum_i ||w_i - w_global_i||^2`` over the trainable tensors."""
    total = sum(((params[k] - global_params[k]) ** 2).sum() for k in global_params)
    return 0.5 * mu * torch.as_tensor(total)


def round_seed(task: SiteTask) -> int:
    """Data-order seed of a round: different every round, the same in every rerun."""
    return task.train.seed + 1000 * task.server_round


def local_train(
    model: torch.nn.Module,
    data: Encoded,
    task: SiteTask,
    correction: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train the trainable parameters in place with a fresh AdamW (``task.train``) for
    ``task.local_steps`` steps or ``task.local_epochs`` epochs; returns train metrics.

    A fresh optimizer per round is the FedAvg convention (sites keep no state between rounds),
    which is what makes one site x E steps equal E centralized steps. FedProx
    (``task.proximal_mu > 0``) adds ``mu/2 ||w - w_global||^2`` to the loss. SCAFFOLD
    (``correction`` = ``c - c_i`` per trainable tensor) moves each step by ``-lr * correction``
    after the optimizer's own step (clients/scaffold.py says why it is applied there).
    """
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if correction is not None:  # moved to the model's device once, not every step
        correction = {n: correction[n].to(p.device, p.dtype) for n, p in params.items()}
    hp, mu = task.train, task.proximal_mu
    anchor = {n: p.detach().clone() for n, p in params.items()} if mu > 0 else {}
    opt = torch.optim.AdamW(
        params.values(), lr=hp.lr, betas=(hp.beta1, hp.beta2), weight_decay=hp.weight_decay
    )
    losses: list[float] = []
    order = batch_order(
        len(data),
        hp.micro_batch_size,
        round_seed(task),
        task.local_steps or None,
        task.local_epochs,
    )
    for idx in order:
        loss, _ = task_loss(model, data.batch(idx), task.spec.task)
        total = loss + proximal_term(params, anchor, mu) if anchor else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        if hp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params.values(), hp.grad_clip)
        opt.step()
        if correction is not None:
            with torch.no_grad():
                for n, p in params.items():
                    p.sub_(correction[n], alpha=hp.lr)
        losses.append(loss.item())
    return {
        "train-loss": sum(losses) / max(1, len(losses)),
        "train-loss-last": losses[-1] if losses else float("nan"),
        "train-steps": float(len(losses)),
    }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: Encoded, task: str, batch_size: int, num_labels: int = 0
) -> dict[str, float | list[int]]:
    """Held-out metrics: loss, accuracy, macro-F1 and the confusion matrix (classification),
    or loss and perplexity (causal LM)."""
    model.eval()
    loss_sum, count = 0.0, 0
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.long) if num_labels else None
    for start in range(0, len(data), batch_size):
        batch = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        loss, logits = task_loss(model, batch, task)
        if task == "classification":
            n = len(batch)
            assert confusion is not None and batch.labels is not None
            pred = logits.argmax(-1).cpu()
            confusion += torch.bincount(
                batch.labels * num_labels + pred, minlength=num_labels * num_labels
            ).reshape(num_labels, num_labels)
        else:
            n = int(batch.attention_mask[:, 1:].sum())
        loss_sum += loss.item() * n
        count += n
    loss = loss_sum / max(1, count)
    out: dict[str, float | list[int]] = {"eval-loss": loss}
    if confusion is not None:
        out.update(classification_metrics(confusion.numpy()))
        out["confusion"] = confusion.reshape(-1).tolist()
    else:
        out["perplexity"] = perplexity(loss)
    return out
