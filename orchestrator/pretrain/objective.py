"""What a pretraining micro-batch trains on: model inputs and labels for each objective.

``causal``: the block is both input and label (the model shifts labels itself).
``masked``: BERT-style masked LM. Each block starts with ``[CLS]`` (as fine-tuning inputs do)
and is masked by transformers' own rule (``DataCollatorForLanguageModeling``: a share
``train.mlm_probability`` of the non-special tokens is picked; of those 80% become ``[MASK]``,
10% a random token, 10% stay; labels are -100 elsewhere). Its random draws come from a generator
seeded by (seed, split, step, block number) alone, so a block is masked the same on whichever
rank and in whichever micro-batch it lands, 2 workers see exactly what 1 worker with 2
accumulation steps sees, and a resumed run masks as the uninterrupted one did. Validation blocks
get the same mask at every evaluation (step 0 of the validation split).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

TRAIN_SPLIT, VAL_SPLIT = 0, 1


def block_seed(seed: int, split: int, step: int, block: int) -> int:
    """A 32-bit seed for one block's mask, a function of its coordinates only."""
    return int(np.random.SeedSequence([seed, split, step, block]).generate_state(1)[0])


class Objective:
    """Builds ``(input_ids, labels)`` int64 tensors (on CPU) from ``[rows, block]`` token ids.

    ``blocks`` are the rows' numbers in their split (the same on every rank): with the step they
    seed the masked objective's draws."""

    def __init__(
        self, objective: str, tokenizer: Any = None, mlm_probability: float = 0.15, seed: int = 0
    ):
        self.objective, self.seed = objective, seed
        if objective != "masked":
            return
        from transformers import DataCollatorForLanguageModeling

        self.collator = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=mlm_probability
        )
        self.special_ids = np.asarray(tokenizer.all_special_ids, dtype=np.int64)
        self.cls_id = tokenizer.cls_token_id

    @property
    def masked(self) -> bool:
        return self.objective == "masked"

    def __call__(
        self, tokens: np.ndarray, blocks: np.ndarray, step: int, split: int = TRAIN_SPLIT
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.asarray(tokens).astype(np.int64))
        if not self.masked:
            return x, x.clone()
        if self.cls_id is not None:
            x[:, 0] = self.cls_id  # the position a classifier pools, as in fine-tuning inputs
        special = torch.from_numpy(np.isin(x.numpy(), self.special_ids))
        inputs, labels = torch.empty_like(x), torch.empty_like(x)
        for r, block in enumerate(np.asarray(blocks).tolist()):
            self.collator.generator = torch.Generator().manual_seed(
                block_seed(self.seed, split, step, int(block))
            )
            inputs[r], labels[r] = self.collator.torch_mask_tokens(
                x[r : r + 1].clone(), special_tokens_mask=special[r : r + 1]
            )
        self.collator.generator = None
        return inputs, labels


def prediction_mask(labels: torch.Tensor, objective: str) -> torch.Tensor:
    """Positions whose output is trained: the masked tokens (masked objective), every position
    of a real row (causal: each predicts the next token; padding rows carry -100)."""
    if objective == "masked":
        return labels != -100
    return (labels != -100).any(dim=-1, keepdim=True).expand_as(labels)
