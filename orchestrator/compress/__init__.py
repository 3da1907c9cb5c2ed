"""Quantized exports (``fedray compress``): torchao weight-only int8 / int4 of a Hugging Face
export, measured before and after on held-out rows.

    inputs.py     what is accepted (no ML import: bad input is answered at once)
    gpt2.py       GPT-2's Conv1D projections -> the exact nn.Linear model (GPTBigCode)
    quantize.py   torchao configs through transformers' TorchAoConfig; module and byte counts
    held_out.py   the rows quality is measured on (never training rows)
    measure.py    size on disk, perplexity or accuracy/macro-F1, tokens/s
    pipeline.py   compress(): check -> rewrite -> quantize -> save -> reload -> measure -> rename

Import :func:`orchestrator.compress.pipeline.compress`; this package imports nothing heavy.
"""
