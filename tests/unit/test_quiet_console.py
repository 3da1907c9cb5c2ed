"""The quiet console (orchestrator/run_log.py): which lines are noise, the filter stream, the
context that routes a process's console to RUN_DIR/run.log, and the sources silenced at their
origin (DeepSpeed's accelerator warning, GPT-2's ``loss_type=None``, ``loss_type: null`` in
exports). The noise lines below are copied from real ``fedray pretrain`` / ``fedray simulate``
runs (Ray 2.55, Flower 1.41, DeepSpeed 0.19.8, transformers 5.23), colour codes included."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings

import pytest

from orchestrator import quiet_imports
from orchestrator.run_log import (
    RUN_LOG,
    ConsoleFilter,
    console_to_run_log,
    is_noise,
    plain,
    quiet_env,
)

C, R = "\x1b[36m", "\x1b[0m"  # Ray's cyan prefix colour, reset

PRETRAIN_NOISE = [
    "2026-11-25 19:02:30,380\tINFO worker.py:2003 -- Started a local Ray instance. View the "
    "dashboard at \x1b[1m\x1b[32mhttp://127.0.0.1:36843 \x1b[39m\x1b[22m",
    "/x/.venv/lib/python3.11/site-packages/ray/_private/worker.py:2051: FutureWarning: Tip: In "
    "future versions of Ray, Ray will no longer override accelerator visible devices env var if "
    "num_gpus=0 or num_gpus=None (default). To enable this behavior and turn off this error "
    "message, set RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0",
    f"{C}(TrainController pid=5673){R} Requesting resources: {{'CPU': 1}} * 2",
    f"{C}(TrainController pid=5673){R} Attempting to start training worker group of size 2 with "
    "the following resources: [{'CPU': 1}] * 2",
    f"{C}(RayTrainWorker pid=5960){R} Setting up process group for: env:// [rank=0, world_size=2]",
    f"{C}(TrainController pid=5673){R} Started training worker group of size 2: ",
    f"{C}(TrainController pid=5673){R} - (ip=192.0.2.2, pid=5960) world_rank=0, local_rank=0, "
    "node_rank=0",
    f"{C}(RayTrainWorker pid=5960){R} Moving model to device: cpu",
    f"{C}(RayTrainWorker pid=5960){R} Wrapping provided model in DistributedDataParallel.",
    f"{C}(RayTrainWorker pid=5931){R} [transformers] `loss_type=None` was set in the config but "
    "it is unrecognized. Using the default loss: `ForCausalLMLoss`.",
    f"{C}(RayTrainWorker pid=5960){R} Checkpoint successfully created at: Checkpoint("
    "filesystem=local, path=/tmp/obs/base1/checkpoint_00000003)",
    "[2026-11-25 19:03:11,076] [WARNING] [real_accelerator.py:213:get_accelerator] Setting "
    "accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
    "Writing model shards:   0%|          | 0/1 [00:00<?, ?it/s]\rWriting model shards: 100%|"
    "██████████| 1/1 [00:00<00:00, 109.96it/s]",
    # DeepSpeed backend
    f"{C}(RayTrainWorker pid=17942){R} DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built "
    "successfully",
    f"{C}(RayTrainWorker pid=17942){R} /x/torch/distributed/c10d_logger.py:83: FutureWarning: "
    "`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
    "`torch.distributed.all_gather_single` instead.",
    "Processing zero checkpoint '/tmp/obs/ds1/checkpoint_00000003/global_step3'",
    "Parsing checkpoint created by deepspeed==0.19.8",
    "Loading checkpoint shards: 100%|██████████| 2/2 [00:00<00:00, 140.94it/s]",
    "Detected checkpoint of type zero stage ZeroStageEnum.gradients, world_size: 2",
    "Reconstructed fp32 state dict with 28 params 675328 elements",
    "[2026-11-25 19:18:30,001] [INFO] [engine.py:1234:_configure_optimizer] Using client "
    "Optimizer as basic optimizer",
]

SIMULATE_NOISE = [
    "Using SuperLink: fedray (127.0.0.1:36871)",
    "Successfully started run 2378772078991076649",
    "\x1b[92mINFO \x1b[0m:      Starting logstream for run_id `2378772078991076649`",
    "\x1b[92mINFO \x1b[0m:      Federation `@none/default` (4 simulated SuperNodes)",
    "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
    "\x1b[92mINFO \x1b[0m:      To change federation size, use the following command:",
    "\x1b[92mINFO \x1b[0m:      \tflwr federation simulation-config @none/default <superlink> "
    "--num-supernodes <N>",
    "Successfully installed fedray-federated to /tmp/sim/simulation/flwr-home/apps/fedray."
    "fedray-federated.0.1.0.648e7a77.",
    f"{C}(ClientAppActor pid=7613){R} \x1b[93mWARNING \x1b[0m:   Manually terminating "
    "ClientAppActor",
    "\x1b[92mINFO \x1b[0m:      ",
]

# `fedray server` (flwr run --stream, the ServerApp) and `fedray site` (the SuperNode's log).
SERVER_SITE_NOISE = [
    "\x1b[92mINFO \x1b[0m:      Start `flwr-serverapp` process",
    "\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode",
    "INFO:     Started server process [9055]",
    "INFO:     Waiting for application startup.",
    "\x1b[92mINFO \x1b[0m:      FastAPI lifespan: startup",
    "INFO:     Application startup complete.",
    "INFO:     Uvicorn running on http://127.0.0.1:9200 (Press CTRL+C to quit)",
    "\x1b[92mINFO \x1b[0m:      Starting Flower SuperExec",
    "\x1b[92mINFO \x1b[0m:      [RUN 1728235871467719450]",
    "\x1b[92mINFO \x1b[0m:      Receiving: train message (ID: efd0888a14c65a8a64cf863efa4740cb24"
    "e98c7c2086eb453323ee40917d2795)",
    "\x1b[92mINFO \x1b[0m:      Received successfully",
    "\x1b[92mINFO \x1b[0m:      Start `flwr-clientapp` process",
    "\x1b[92mINFO \x1b[0m:      Sending: evaluate message (ID: c4ca4cbd0b040f2fd73199d31425fb69)",
    "\x1b[92mINFO \x1b[0m:      Sent successfully",
    "Generating train split: 0 examples [00:00, ? examples/s]Generating train split: 300 examples "
    "[00:00, 9630.12 examples/s]",
]

SITE_KEPT = [
    "\x1b[92mINFO \x1b[0m:      SuperNode ID: 10017989652064080195",
    "\x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying in 4.3 seconds",
    'INFO:     127.0.0.1:5123 - "POST /x HTTP/1.1" 500 Internal Server Error',
]
TABLE_ROW = "    1     1.0608    1.1469     0.4792     0.2160     4   0    10.66    21.32     1.8"

KEPT = [
    "[fedray] run /tmp/obs/p2 | ddp x 2 workers (CPU/gloo) | 1971 train blocks x 128 tokens",
    "step      1/3 | loss 7.6722 | lr 1.00e-04 | gnorm 1.84 | 8.4k tok/s | 244 ms/step",
    "[fedray] Hugging Face export: /tmp/obs/p2/export",
    "partition (natural): 4 sites",
    "round train-loss eval-loss   accuracy   macro-F1 sites rej    up MB  down MB  time s",
    "    1     1.0608    1.1469     0.4792     0.2160     4   0    10.66    21.32     1.8",
    "            site-0:  train-loss 1.1866  accuracy 0.7500  macro-F1 0.2857  n=48",
    "\x1b[92mINFO \x1b[0m:      Starting Flower Simulation",
    # Errors and warnings that are not listed always reach the console.
    "Traceback (most recent call last):",
    f"{C}(RayTrainWorker pid=5960){R} RuntimeError: fedray fault injection: rank 1 fails",
    f"{C}(RayTrainWorker pid=5960){R} Traceback (most recent call last):",
    "\x1b[91mERROR \x1b[0m:     ServerApp thread raised an exception: boom",
    "/x/orchestrator/thing.py:3: UserWarning: something the user must see",
    "[2026-11-25 19:18:30,001] [WARNING] [engine.py:99:step] DeepSpeed says: overflow",
    "WARNING:orchestrator.federated.rounds:resuming /tmp/run from round 2",
    "Writing the report to runs/x",
    # Ray appends its de-duplication tip to whatever line it first folds: here, an error.
    f"{C}(TrainController pid=20240){R} Traceback (most recent call last): [repeated 2x across "
    "cluster] (Ray deduplicates logs by default. Set RAY_DEDUP_LOGS=0 to disable log "
    "deduplication, or see https://docs.ray.io/en/master/ray-observability/user-guides/"
    "configure-logging.html#log-deduplication for more options.)",
]
KEPT += SITE_KEPT


@pytest.mark.parametrize("line", PRETRAIN_NOISE + SIMULATE_NOISE + SERVER_SITE_NOISE)
def test_listed_third_party_lines_are_noise(line):
    assert is_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_fedray_lines_errors_and_unlisted_warnings_are_kept(line):
    assert not is_noise(line)


def transcript(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def test_filter_hides_noise_keeps_the_rest_and_logs_everything():
    real_run = [
        KEPT[0],
        PRETRAIN_NOISE[0],
        PRETRAIN_NOISE[1],
        "  warnings.warn(",  # the warning's source line goes with it
        PRETRAIN_NOISE[2],
        KEPT[1],
        PRETRAIN_NOISE[12],  # progress bar (carriage-return redraws)
        "",  # and the blank line after it
        PRETRAIN_NOISE[14],
        f"{C}(RayTrainWorker pid=17942){R}   return func(*args, **kwargs)",  # its source line
        KEPT[8],
        '  File "/x/orchestrator/pretrain/loop.py", line 3, in f',  # a traceback's indent stays
        KEPT[2],
    ]
    console, log = io.StringIO(), io.StringIO()
    f = ConsoleFilter(console, log)
    text = transcript(real_run)
    for i in range(0, len(text), 7):  # arbitrary chunks: lines are reassembled
        f.write(text[i : i + 7])
    assert console.getvalue() == transcript([*KEPT[:2], KEPT[8], real_run[11], KEPT[2]])
    logged = log.getvalue().splitlines()
    assert len(logged) == len(real_run)
    assert "\x1b[" not in log.getvalue()  # colour codes stripped in run.log
    assert logged[6].startswith("Writing model shards: 100%")  # only the last redraw


def test_verbose_filter_shows_everything():
    console, log = io.StringIO(), io.StringIO()
    lines = [KEPT[0], *PRETRAIN_NOISE[:3], KEPT[1]]
    ConsoleFilter(console, log, verbose=True).write(transcript(lines))
    assert console.getvalue() == transcript(lines)
    assert len(log.getvalue().splitlines()) == len(lines)


def test_partial_line_waits_for_its_newline_and_detach_passes_through():
    console, log = io.StringIO(), io.StringIO()
    f = ConsoleFilter(console, log)
    f.write("Using SuperLink: fedray")
    assert console.getvalue() == ""
    f.write(" (127.0.0.1:1)\nkept ")
    assert console.getvalue() == ""
    f.detach_log()  # the pending partial line is written out, then everything passes
    assert console.getvalue() == "kept "
    f.write("Using SuperLink: x\n")
    assert console.getvalue() == "kept Using SuperLink: x\n"
    assert log.getvalue() == "Using SuperLink: fedray (127.0.0.1:1)\nkept "


def test_a_console_that_is_no_terminal_gets_plain_lines():
    """A Ray Job's log (fedray submit) or a pipe: Flower's colour codes and redraws are gone
    from what is shown, as from run.log; the same lines are shown or hidden."""
    coloured = "\x1b[92mINFO \x1b[0m:      Starting Flower Simulation"
    lines = [coloured, SIMULATE_NOISE[0], "rounds 1/2\rrounds 2/2", KEPT[0]]
    for verbose in (False, True):
        console, log = io.StringIO(), io.StringIO()
        ConsoleFilter(console, log, verbose, plain_console=True).write(transcript(lines))
        shown = console.getvalue().splitlines()
        assert shown[0] == "INFO :      Starting Flower Simulation" and "rounds 2/2" in shown
        assert "\x1b[" not in console.getvalue() and "\r" not in console.getvalue()
        assert len(shown) == (4 if verbose else 3)


def test_plain_strips_colours_and_keeps_the_last_redraw():
    assert plain("\x1b[92mINFO \x1b[0m: a\n") == "INFO : a\n"
    assert plain("bar 0%\rbar 50%\rbar 100%\n") == "bar 100%\n"


def test_console_to_run_log_routes_prints_logging_and_warnings(tmp_path, capsys):
    stderr_handler = logging.StreamHandler(sys.stderr)  # bound before the filter, like Ray's
    lg = logging.getLogger("test.quiet.console")
    lg.addHandler(stderr_handler)
    lg.propagate = False
    try:
        with console_to_run_log(tmp_path) as path:
            assert isinstance(sys.stdout, ConsoleFilter) and isinstance(sys.stderr, ConsoleFilter)
            print(KEPT[0])
            print(SIMULATE_NOISE[0])
            lg.warning(PRETRAIN_NOISE[2])
            lg.warning("a warning fedray did not list")
            # What warnings.showwarning writes to sys.stderr (pytest records real warnings).
            for message, category, where in (
                (PRETRAIN_NOISE[1].split("FutureWarning: ")[1], FutureWarning, "/x/worker.py"),
                ("unlisted: keep me", UserWarning, "/x/orchestrator/a.py"),
            ):
                sys.stderr.write(warnings.formatwarning(message, category, where, 7, "f()"))
    finally:
        lg.removeHandler(stderr_handler)
    assert stderr_handler.stream is sys.stderr  # handlers get their stream back
    out = capsys.readouterr()
    assert out.out == KEPT[0] + "\n"
    assert "a warning fedray did not list" in out.err and "unlisted: keep me" in out.err
    assert "Requesting resources" not in out.err and "FutureWarning" not in out.err
    assert "UserWarning: unlisted: keep me\n  f()\n" in out.err  # its source line too
    log = (tmp_path / RUN_LOG).read_text()
    assert path == tmp_path / RUN_LOG
    for text in ("Using SuperLink", "Requesting resources", "FutureWarning: Tip", KEPT[0]):
        assert text in log


def test_console_to_run_log_appends_and_records_an_error(tmp_path, capsys):
    (tmp_path / RUN_LOG).write_text("earlier run\n")
    stdout = sys.stdout
    with pytest.raises(RuntimeError, match="boom"), console_to_run_log(tmp_path):
        print(KEPT[1])
        raise RuntimeError("boom")
    assert sys.stdout is stdout
    log = (tmp_path / RUN_LOG).read_text()
    assert log.startswith("earlier run\n")  # appended, not truncated
    assert KEPT[1] in log
    assert "Traceback (most recent call last)" in log and "RuntimeError: boom" in log
    assert capsys.readouterr().out == KEPT[1] + "\n"


def test_quiet_env_sets_deepspeeds_own_choice_only_without_cuda(monkeypatch):
    import torch

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quiet_env() == {"DS_ACCELERATOR": "cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert quiet_env() == {}  # DeepSpeed must pick CUDA there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    assert quiet_env() == {}  # the user's choice stands


def test_context_applies_and_restores_quiet_env(monkeypatch, tmp_path):
    import torch

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with console_to_run_log(tmp_path):
        assert os.environ["DS_ACCELERATOR"] == "cpu"
    assert "DS_ACCELERATOR" not in os.environ


@pytest.mark.integration  # a fresh interpreter (subprocess) is the point; ~2-5 s of imports
def test_deepspeed_accelerator_warning_is_silenced_at_its_source():
    """DS_ACCELERATOR=cpu: DeepSpeed takes the CPU accelerator without its warning (and, as a
    control in the same process, warns when it has to detect the accelerator itself)."""
    if quiet_env() != {"DS_ACCELERATOR": "cpu"}:
        pytest.skip("CUDA is visible or DS_ACCELERATOR is set: fedray sets nothing")
    code = """
import os
import deepspeed.accelerator.real_accelerator as ra
print("quiet:", ra.get_accelerator().device_name(), flush=True)
ra.ds_accelerator = None
del os.environ["DS_ACCELERATOR"]
print("detected:", ra.get_accelerator().device_name(), flush=True)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **quiet_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "quiet: cpu"  # no warning before the first line
    assert "Setting accelerator to CPU" in out[1] and out[2] == "detected: cpu", out


# ---- GPT-2's loss type and the export's config ----------------------------------------------


def tiny_gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_gpt2_gets_the_causal_lm_loss_without_a_warning():
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.models import name_default_loss

    hf_log = logging.getLogger("transformers.modeling_utils")
    records = _Records()
    hf_log.addHandler(records)
    try:
        logging.Logger.warning_once.cache_clear()  # transformers warns once per process
        fixed = name_default_loss(AutoModelForCausalLM.from_config(tiny_gpt2_config())).eval()
        assert fixed.loss_type == "ForCausalLM"
        x = torch.randint(0, 64, (2, 8))
        loss = fixed(input_ids=x, labels=x).loss
        assert not [m for m in records.messages if "loss_type" in m]

        model = AutoModelForCausalLM.from_config(tiny_gpt2_config()).eval()
        model.load_state_dict(fixed.state_dict())
        assert model.loss_type is None  # transformers 5.23 cannot name GPT2LMHeadModel's loss
        assert torch.equal(model(input_ids=x, labels=x).loss, loss)  # the loss it falls back to
        assert [m for m in records.messages if "`loss_type=None`" in m]  # ... with its warning
    finally:
        hf_log.removeHandler(records)
    named = AutoModelForCausalLM.from_config(tiny_gpt2_config())
    named.loss_type = "ForMaskedLM"
    assert name_default_loss(named).loss_type == "ForMaskedLM"  # a named loss stays


def test_contract_build_names_the_loss_of_causal_lm_sites():
    from orchestrator.contract.model import ModelSpec, build

    spec = ModelSpec(task="causal_lm", hf_config=tiny_gpt2_config().to_dict())
    assert build(spec).loss_type == "ForCausalLM"
    cls = ModelSpec(task="classification", hf_config={**spec.hf_config, "num_labels": 2})
    assert build(cls).loss_type == "ForSequenceClassification"


@pytest.mark.integration  # a fresh interpreter (subprocess) is the point; ~2-5 s of imports
def test_export_drops_a_null_loss_type_and_loads_in_plain_transformers_silently(tmp_path):
    from transformers import AutoConfig

    from orchestrator.export import export_hf
    from orchestrator.models import build_model

    src = tmp_path / "src"
    tiny_gpt2_config().save_pretrained(src)
    cfg_json = json.loads((src / "config.json").read_text())
    cfg_json["loss_type"] = None  # as config.json files of some transformers 4.x releases
    (src / "config.json").write_text(json.dumps(cfg_json))
    config = AutoConfig.from_pretrained(src)
    assert config.to_dict()["loss_type"] is None  # it would be saved again...
    out = export_hf(build_model(config).state_dict(), config, None, tmp_path / "export")
    assert "loss_type" not in json.loads((out / "config.json").read_text())  # ...but is not

    # A fresh interpreter with plain transformers: load, forward and generate print nothing.
    code = f"""
import logging, warnings, torch
warnings.simplefilter("always")
logging.basicConfig(level=logging.WARNING)
from transformers import AutoModelForCausalLM
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    m = AutoModelForCausalLM.from_pretrained({str(out)!r})
    x = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        m(input_ids=x)
        m.generate(x, max_new_tokens=2, do_sample=False)
print("warnings:", [str(w.message) for w in caught])
"""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # "Loading weights" bar
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "warnings: []"
    # With torchao installed (the compress extra) plain transformers imports it, which logs
    # notices about its optional CUDA kernels for any model: not this export's doing (fedray's
    # own processes drop them, orchestrator/quiet_imports.py). Everything else must be silent.
    fragments = [f for group in quiet_imports.NOISE.values() for f in group]
    rest = [ln for ln in proc.stderr.splitlines() if not any(f in ln for f in fragments)]
    assert rest == [], proc.stderr


# ---- fedray server / fedray site ------------------------------------------------------------


def test_fedray_site_console_is_quiet_and_its_state_dir_has_run_log(tmp_path, capsys, monkeypatch):
    from orchestrator.commands import site as site_cmd

    data = tmp_path / "a.csv"
    data.write_text("text,label\nhi,1\n")

    def fake_run_once(opts, log_path, state_dir):  # the SuperNode's log, echoed as _follow does
        sys.stdout.write("".join(line + "\n" for line in SERVER_SITE_NOISE[1:]))
        sys.stdout.write(SITE_KEPT[0] + "\n" + SITE_KEPT[1] + "\n")
        return 0, ""

    monkeypatch.setattr(site_cmd, "_run_site_once", fake_run_once)  # site_main's module
    argv = ["--server", "127.0.0.1:9092", "--data", str(data), "--insecure"]
    state = tmp_path / "state"
    assert site_cmd.site_main([*argv, "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    # capsys is no terminal: the kept lines are shown without their colour codes.
    kept = [plain(line) for line in SITE_KEPT[:2]]
    assert f"site log: {state / RUN_LOG}" in out and kept[0] in out and kept[1] in out
    assert "\x1b[" not in out
    assert not [n for n in SERVER_SITE_NOISE[1:] if plain(n).strip() in out]
    log = (state / RUN_LOG).read_text()
    assert "Receiving: train message" in log and "SuperNode ID" in log

    assert site_cmd.site_main([*argv, "--state-dir", str(state), "--verbose"]) == 0
    assert "Receiving: train message" in capsys.readouterr().out


def test_fedray_server_console_is_quiet_and_run_dir_has_run_log(tmp_path, capsys, monkeypatch):
    from orchestrator.commands import server as server_cmd
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config, to_yaml
    from orchestrator.processes import server_session

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = load_config(FederatedJob, None, ["federation.num_rounds=2"], "simulate-demo")
    (run_dir / "config.yaml").write_text(to_yaml(job))

    def fake_serve(job, opts, run_dir, resume=False, out=None):  # what flwr run --stream echoes
        print("Using SuperLink: fedray (127.0.0.1:9093)\nSuccessfully started run 17")
        print(SERVER_SITE_NOISE[0])
        print(TABLE_ROW)  # the round table
        return server_session.ServerRun(run_dir, 17, "finished:completed", [])

    monkeypatch.setattr(server_session, "serve", fake_serve)
    monkeypatch.setattr(server_cmd, "_check_before_start", lambda job, opts: None)  # data checks
    argv = ["--resume", str(run_dir), "--insecure", "--port", "0"]
    assert server_cmd.server_main(argv) == 0
    out = capsys.readouterr().out
    assert TABLE_ROW in out and "run 17: finished:completed" in out and "fedray report" in out
    assert "Using SuperLink" not in out and "flwr-serverapp" not in out
    log = (run_dir / RUN_LOG).read_text()
    assert "Using SuperLink" in log and "flwr-serverapp" in log and TABLE_ROW in log
    assert server_cmd.server_main([*argv, "--verbose"]) == 0
    assert "Using SuperLink" in capsys.readouterr().out
