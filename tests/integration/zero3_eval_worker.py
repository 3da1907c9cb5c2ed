"""One rank of the ZeRO-3 evaluation test (tests/integration/test_zero3_eval.py).

    python -m tests.integration.zero3_eval_worker RANK WORLD PORT OUT_JSON

Builds the same seeded tiny GPT-2 on every rank, computes the validation loss of 3 blocks in
this process alone (the reference), then under a 2-rank DeepSpeed ZeRO-3 engine over gloo.
"""

from __future__ import annotations

import json
import os
import sys

rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ.update(
    MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world),
    LOCAL_RANK="0", LOCAL_WORLD_SIZE=str(world),
)  # fmt: skip

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from orchestrator.config import PretrainJob, load_config  # noqa: E402
from orchestrator.models import hf_config  # noqa: E402
from orchestrator.pretrain.backends.deepspeed import deepspeed_config  # noqa: E402
from orchestrator.pretrain.loop import evaluate, seed_everything, worker_model  # noqa: E402

torch.set_num_threads(1)
job = load_config(
    PretrainJob,
    None,
    [
        "backend=deepspeed",
        "deepspeed.zero_stage=3",
        f"scaling.num_workers={world}",
        "train.micro_batch_size=1",
        f"train.global_batch_size={world}",
        "model.n_layer=1",
        "model.d_model=32",
        "model.n_head=2",
    ],
    default_preset="pretrain-tiny",
)
seed_everything(0)
model = worker_model(job, hf_config(job.model, 64, 16, 0).to_dict())
# 3 blocks over 2 ranks at micro-batch 1: rank 0 owns 2, rank 1 owns 1 (unequal forwards before).
val = np.random.default_rng(0).integers(0, 64, (3, 16)).astype(np.uint16)
cpu = torch.device("cpu")
reference, _ = evaluate(model, val, job, 0, 1, cpu)  # before any process group exists

import deepspeed  # noqa: E402

dist.init_process_group("gloo")
deepspeed.init_distributed(dist_backend="gloo", dist_init_required=False)
engine, *_ = deepspeed.initialize(
    model=model,
    optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
    config=deepspeed_config(job),
    dist_init_required=False,
)
loss, _ = evaluate(engine.module, val, job, rank, world, cpu)
with open(out, "w") as fh:
    json.dump({"rank": rank, "loss": loss, "reference": reference}, fh)
dist.destroy_process_group()
