"""GPT-2 -> the same network with ``nn.Linear`` projections, so torchao can quantize it.

GPT-2's attention and MLP projections are transformers' ``Conv1D``: ``x @ W + b`` with ``W``
stored ``[in, out]``. torchao's weight-only configs quantize ``nn.Linear`` (``[out, in]``) and
its quantized tensors implement ``linear``, not the ``addmm`` a ``Conv1D`` calls; and a plain
transformers process must rebuild the architecture the export names. transformers' GPTBigCode
is GPT-2 with ``nn.Linear`` projections (learned positions, pre-LayerNorm blocks, the same
activation and attention scaling); with ``multi_query=False`` it is multi-head attention like
GPT-2. Its fused ``c_attn`` lays the outputs out per head (``q_h, k_h, v_h`` for each head ``h``)
where GPT-2 has ``Q | K | V``: one fixed row permutation. The rewrite is exact (the logits are
compared before anything is quantized: :func:`check_same_logits`).
"""

from __future__ import annotations

import torch
from transformers import GPTBigCodeConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

# GPT-2 config keys with no GPTBigCode meaning (the rest carry over: sizes, dropout, activation,
# layer-norm epsilon, attention scaling, token ids, labels, tie_word_embeddings).
_GPT2_ONLY = (
    "model_type", "architectures", "transformers_version", "n_ctx", "reorder_and_upcast_attn",
    "scale_attn_by_inverse_layer_idx", "summary_type", "summary_use_proj", "summary_activation",
    "summary_proj_to_labels", "summary_first_dropout", "quantization_config",
)  # fmt: skip
_ARCHITECTURES = {
    "GPT2LMHeadModel": "GPTBigCodeForCausalLM",
    "GPT2ForSequenceClassification": "GPTBigCodeForSequenceClassification",
}


class UnsupportedGPT2(ValueError):
    """A GPT-2 variant with no GPTBigCode equivalent (the message says which setting)."""


def qkv_permutation(n_embd: int, n_head: int) -> torch.Tensor:
    """Row order taking GPT-2's ``c_attn`` outputs (``Q | K | V``, heads inside each) to
    GPTBigCode's (per head: ``q_h | k_h | v_h``): ``new[i] = old[perm[i]]``."""
    head_dim = n_embd // n_head
    return torch.arange(3 * n_embd).view(3, n_head, head_dim).permute(1, 0, 2).reshape(-1)


def bigcode_config(model: PreTrainedModel) -> GPTBigCodeConfig:
    """The GPTBigCode config of the same network as the GPT-2 ``model``."""
    cfg = model.config
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or cfg.add_cross_attention:
        raise UnsupportedGPT2(
            "GPT-2 with scale_attn_by_inverse_layer_idx or cross-attention has no nn.Linear "
            "equivalent in transformers; compress a GPT-2 without them"
        )
    arch = _ARCHITECTURES.get(type(model).__name__)
    if arch is None:
        raise UnsupportedGPT2(f"{type(model).__name__}: fedray rewrites {sorted(_ARCHITECTURES)}")
    kept = {k: v for k, v in cfg.to_dict().items() if k not in _GPT2_ONLY}
    new = GPTBigCodeConfig(**kept, multi_query=False)
    new.architectures = [arch]
    return new


def linear_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """``model``'s weights with every ``Conv1D`` weight transposed to ``nn.Linear`` layout and
    each ``c_attn`` (weight and bias) permuted to GPTBigCode's per-head order."""
    conv = {name for name, m in model.named_modules() if isinstance(m, Conv1D)}
    perm = qkv_permutation(model.config.n_embd, model.config.n_head)
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        module, _, param = key.rpartition(".")
        if module in conv and param == "weight":
            value = value.t()
        if module.endswith("attn.c_attn"):
            value = value[perm]
        out[key] = value.contiguous()
    return out


def to_linear_model(model: PreTrainedModel) -> PreTrainedModel:
    """The GPTBigCode model computing what the GPT-2 ``model`` computes."""
    import transformers

    cfg = bigcode_config(model)
    new = getattr(transformers, cfg.architectures[0])(cfg)
    missing, unexpected = new.load_state_dict(linear_state_dict(model), strict=False)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GPT-2 rewrite: missing={missing} unexpected={unexpected}")
    if tied:
        new.tie_weights()
    return new.eval()


def check_same_logits(a: torch.nn.Module, b: torch.nn.Module, input_ids: torch.Tensor) -> float:
    """Largest absolute logit difference of ``a`` and ``b`` on ``input_ids`` (a padded row
    included); raises if it is above float32 round-off."""
    mask = torch.ones_like(input_ids)
    mask[0, input_ids.shape[1] // 2 :] = 0
    with torch.inference_mode():
        la = a.eval()(input_ids=input_ids, attention_mask=mask).logits
        lb = b.eval()(input_ids=input_ids, attention_mask=mask).logits
    diff = float((la - lb).abs().max())
    if diff > 1e-4 * max(1.0, float(la.abs().max())):
        raise RuntimeError(f"GPT-2 -> nn.Linear rewrite changed the logits by {diff:.3g}")
    return diff


__all__ = [
    "UnsupportedGPT2",
    "bigcode_config",
    "check_same_logits",
    "linear_state_dict",
    "qkv_permutation",
    "to_linear_model",
]
