"""How pretraining optimises: the optimiser and batch (``train``), the Ray Train workers
(``scaling``) and the DeepSpeed backend's settings (``deepspeed``)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.fields import require

OBJECTIVES = ("causal", "masked")


@dataclass
class TrainConfig:
    """Optimisation. The global batch is split as micro_batch x workers x accumulation."""

    max_steps: int = 300
    """Optimizer steps to run in total (a resumed run continues up to this number)."""
    global_batch_size: int = 16
    """Sequences per optimizer step, summed over all workers and accumulation steps."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one worker."""
    grad_accum_steps: int | None = None
    """Micro-batches accumulated per step on each worker; ``None`` = derived from the batch sizes."""
    lr: float = 1e-3
    """Peak learning rate (reached after warmup)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio`` at ``max_steps``."""
    warmup_steps: int = 30
    """Linear warmup steps from 0 to ``lr``."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to biases and norms)."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (logs a warning)."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU), ``fp32`` or ``bf16``."""
    seed: int = 1234
    """Seeds model init, data order and dropout."""
    log_every: int = 10
    """Print a progress line every N steps (every step goes to metrics.jsonl)."""
    eval_every: int = 100
    """Validation loss/perplexity every N steps and at the end; 0 = only at the end."""
    eval_batches: int = 8
    """Micro-batches per validation pass on each worker."""
    objective: str = "causal"
    """``causal`` (next-token loss: gpt2, llama) or ``masked`` (BERT-style masked-LM loss:
    encoder families such as bert). Masked blocks start with the tokenizer's ``[CLS]``."""
    mlm_probability: float = 0.15
    """Masked objective: the share of (non-special) tokens chosen for prediction; of those 80%
    become ``[MASK]``, 10% a random token, 10% stay (transformers' masking rule)."""
    activation_checkpointing: bool = False
    """Recompute each transformer layer's activations in the backward pass instead of keeping
    them (the Hugging Face model's gradient checkpointing; DDP and DeepSpeed): less memory,
    about one more forward pass of compute per step. Same losses."""

    def __post_init__(self) -> None:
        require(self.max_steps >= 1, self, "max_steps", "an integer >= 1")
        require(self.global_batch_size >= 1, self, "global_batch_size", "an integer >= 1")
        require(self.micro_batch_size >= 1, self, "micro_batch_size", "an integer >= 1")
        if self.grad_accum_steps is not None:
            require(self.grad_accum_steps >= 1, self, "grad_accum_steps", "an integer >= 1 or null")
        require(self.lr > 0, self, "lr", "a float > 0")
        require(0.0 <= self.min_lr_ratio <= 1.0, self, "min_lr_ratio", "a float in [0, 1]")
        require(self.warmup_steps >= 0, self, "warmup_steps", "an integer >= 0")
        require(self.weight_decay >= 0, self, "weight_decay", "a float >= 0")
        require(0 <= self.beta1 < 1, self, "beta1", "a float in [0, 1)")
        require(0 <= self.beta2 < 1, self, "beta2", "a float in [0, 1)")
        require(self.grad_clip >= 0, self, "grad_clip", "a float >= 0 (0 disables clipping)")
        require(
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            self,
            "precision",
            "'auto', 'fp32', 'bf16' or 'fp16'",
        )
        require(self.objective in OBJECTIVES, self, "objective", "'causal' or 'masked'")
        require(0.0 < self.mlm_probability < 1.0, self, "mlm_probability", "a float in (0, 1)")
        require(self.log_every >= 1, self, "log_every", "an integer >= 1")
        require(self.eval_every >= 0, self, "eval_every", "an integer >= 0")
        require(self.eval_batches >= 1, self, "eval_batches", "an integer >= 1")


@dataclass
class ScalingConfig:
    """How many Ray Train workers and what each one gets."""

    num_workers: int = 2
    """Training processes (one per GPU on GPU clusters)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL backend. ``False`` = CPU workers over gloo."""
    cpus_per_worker: int = 1
    """CPU cores reserved for each worker."""

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, self, "num_workers", "an integer >= 1")
        require(self.cpus_per_worker >= 1, self, "cpus_per_worker", "an integer >= 1")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed settings, used when ``backend=deepspeed``."""

    zero_stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters)."""
    offload_optimizer: bool = False
    """Keep optimizer states (and the optimizer step) on CPU. Needs ``zero_stage`` >= 1: DeepSpeed
    offloads the ZeRO partitions. With ``optimizer=deepspeed`` this builds cpu_adam on first use
    (~2 min, ~10 GB RAM); with ``torch`` AdamW steps the offloaded states (no build, slower)."""
    offload_params: bool = False
    """Keep parameters on CPU (ZeRO-3 only: only stage 3 partitions parameters)."""
    optimizer: str = "torch"
    """``torch`` (torch.optim.AdamW given to DeepSpeed; no JIT build) or ``deepspeed`` (DeepSpeed's
    own fused/CPU Adam, JIT-compiled on first use)."""
    config_file: str | None = None
    """A user DeepSpeed JSON merged over the generated one for advanced options; keys that conflict
    with the typed config are reported as errors, not silently overridden."""

    def __post_init__(self) -> None:
        require(self.zero_stage in (0, 1, 2, 3), self, "zero_stage", "0, 1, 2 or 3")
        require(
            self.optimizer in ("torch", "deepspeed"), self, "optimizer", "'torch' or 'deepspeed'"
        )
        require(
            not self.offload_optimizer or self.zero_stage >= 1,
            self,
            "offload_optimizer",
            f"false with deepspeed.zero_stage={self.zero_stage} (offload moves ZeRO partitions)",
            "Set deepspeed.zero_stage=1, 2 or 3, or deepspeed.offload_optimizer=false.",
        )
        require(
            not self.offload_params or self.zero_stage == 3,
            self,
            "offload_params",
            f"false with deepspeed.zero_stage={self.zero_stage} (only ZeRO-3 partitions parameters)",
            "Set deepspeed.zero_stage=3, or deepspeed.offload_params=false.",
        )
