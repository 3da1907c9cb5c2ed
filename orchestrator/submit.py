"""``fedray submit``: run a pretraining job or a federated simulation on a remote Ray cluster
from a laptop.

    fedray submit pretrain-gpt2-124m scaling.num_workers=16 scaling.use_gpu=true \\
        run.root=/shared/runs data.paths=[/shared/corpus] --address http://HEAD:8265
    fedray submit simulate-demo federation.num_sites=16 run.root=/shared/runs
    fedray submit my.yaml --dry-run            # validate + print what would be uploaded, exit
    fedray submit my.yaml --no-wait            # print the job id and return
    fedray jobs list | logs ID [--follow] | stop ID

Which command the cluster runs is told by the config's top-level sections
(:func:`submit_command`): ``fedray simulate`` for a federated job, ``fedray pretrain`` for a
pretraining job, ``fedray tune`` for a config with a ``tune`` section. The job is validated here
exactly as that command validates it (same schema, same exit 2), then submitted through Ray's
Job Submission API (:class:`ray.job_submission.JobSubmissionClient`):

- ``working_dir``: a fresh directory holding only the resolved ``config.yaml`` (the entrypoint
  runs ``python -m orchestrator.cli COMMAND config.yaml``; the config says
  ``cluster.address: auto``, and a Ray Job's driver gets the cluster's GCS address in
  ``RAY_ADDRESS``, which Ray lets win over ``auto``).
- The project is pinned by shipping this checkout's ``orchestrator``, ``clients`` and
  ``strategies`` packages as ``py_modules`` (a few MB; ``__pycache__`` etc. excluded): the
  cluster runs exactly the code that was validated here, and the bundled demo assets
  (``demo:`` paths, the demo data an empty ``data.paths`` means) travel with it. Its
  dependencies (torch, ray, ...) come from the cluster's image (``cluster-configs/``'s
  Dockerfiles install the pinned stack); ``--pip SPEC`` adds pip packages to the job's runtime
  env, ``--no-ship-code`` runs the fedray the image has instead.
- Paths in the config are paths *on the cluster*: run and data paths must be absolute (or
  ``~/...``), since the working_dir is a temporary directory that disappears after the job.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError, to_yaml
from orchestrator.config.schema import PretrainJob

Job = PretrainJob | FederatedJob

# Never uploaded: caches, VCS and build debris, local run outputs.
EXCLUDES = ["__pycache__", "*.pyc", "*.pyo", ".git", "*.egg-info", ".pytest_cache", "runs"]
SHIPPED_PACKAGES = ("orchestrator", "clients", "strategies")
DEFAULT_MAX_UPLOAD_MB = 100  # Ray's own hard limit is 512 MiB (one gRPC message)
CONFIG_NAME = "config.yaml"

JOB_SCHEMAS: dict[str, tuple[type, str]] = {
    "pretrain": (PretrainJob, "pretrain-tiny"),
    "simulate": (FederatedJob, "simulate-demo"),
}
"""command -> (its schema, the preset a config without a file starts from)."""


def _only_in(schema: type, other: type) -> list[str]:
    names = {f.name for f in dataclasses.fields(other)}
    return sorted(f.name for f in dataclasses.fields(schema) if f.name not in names)


def submit_command(top_keys: set[str], source: str | None) -> str:
    """The command a submitted config runs, told by its top-level keys (the file's and the
    overrides'): ``tune`` with a ``tune`` section, ``simulate`` with a section only a federated
    job has (``federation``, ``strategy``, ...), ``pretrain`` with one only pretraining has
    (``scaling``, ``backend``, ...). No config file and only shared keys: ``pretrain`` (its
    default preset, as ``fedray pretrain``). A ConfigError for sections of both kinds, or a
    file whose sections do not tell."""
    if "tune" in top_keys:
        return "tune"
    fed = [k for k in _only_in(FederatedJob, PretrainJob) if k in top_keys]
    pre = [k for k in _only_in(PretrainJob, FederatedJob) if k in top_keys]
    if fed and pre:
        raise ConfigError(
            f"the config has sections only a pretraining job has ({', '.join(pre)}) and "
            f"sections only a federated job has ({', '.join(fed)}); fedray submit runs one "
            "job. Drop one kind: the former for `fedray simulate`, the latter for "
            "`fedray pretrain`.",
            pre[0],
        )
    if fed:
        return "simulate"
    if pre or source is None:
        return "pretrain"
    raise ConfigError(
        f"config {source!r}: its sections ({', '.join(sorted(top_keys)) or 'none'}) are shared "
        "by pretraining and federated jobs, so fedray submit cannot tell which to run. Add a "
        "section only one of them has: `scaling: {}` to pretrain (fedray pretrain), "
        "`federation: {}` to simulate a federation (fedray simulate).",
    )


@dataclass
class Upload:
    """What goes to the cluster: files (relative name, bytes) of each uploaded directory."""

    dirs: dict[str, Path]
    files: list[tuple[str, int]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)


def excluded(rel: Path, patterns: Sequence[str] = EXCLUDES) -> bool:
    """Whether a path (relative to an uploaded directory) matches an exclude pattern in any part."""
    return any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in patterns)


def scan_upload(dirs: dict[str, Path], patterns: Sequence[str] = EXCLUDES) -> Upload:
    """The files Ray would upload from ``dirs`` after ``patterns`` (same rules as runtime_env
    ``excludes``: a pattern matching a directory drops everything below it)."""
    up = Upload(dirs)
    for label, root in dirs.items():
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = [
                d for d in dirnames if not excluded((here / d).relative_to(root), patterns)
            ]
            for f in filenames:
                rel = (here / f).relative_to(root)
                if not excluded(rel, patterns):
                    up.files.append((f"{label}/{rel}", (here / f).stat().st_size))
    return up


def check_upload_size(up: Upload, max_mb: float) -> None:
    """A ConfigError (exit 2) before anything is uploaded when the upload is too large."""
    if up.total_bytes <= max_mb * 2**20:
        return
    biggest = sorted(up.files, key=lambda f: -f[1])[:5]
    listing = ", ".join(f"{name} ({n / 2**20:.1f} MiB)" for name, n in biggest)
    raise ConfigError(
        f"the upload to the cluster would be {up.total_bytes / 2**20:.1f} MiB, over the "
        f"{max_mb:g} MiB limit (--max-upload-mb). Largest files: {listing}. Put data on storage "
        "the cluster sees (data.paths=[/shared/...]) instead of inside the code directories.",
        "--max-upload-mb",
    )


# Config keys holding paths that the job opens on the cluster.
PATH_KEYS = (
    "run.root",
    "run.dir",
    "data.paths",
    "data.cache_dir",
    "data.tokenizer.path",
    "model.path",
)


def _get(job: Job, key: str) -> Any:
    value: Any = job
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_cluster_paths(job: Job) -> None:
    """Relative paths would resolve inside the job's temporary working_dir on the cluster: the
    run would vanish with it and data would not be found. Ask for absolute paths up front."""
    for key in PATH_KEYS:
        value = _get(job, key)
        if key == "run.root" and job.run.dir:
            continue
        for p in value if isinstance(value, list) else [value]:
            if p is None or p.startswith(("/", "~", "demo:")):  # demo: assets ship with fedray
                continue
            raise ConfigError(
                f"{key}={p!r} is relative; a submitted job runs in a temporary directory on the "
                f"cluster, so relative paths point there. Give a path on the cluster's shared "
                f"storage, e.g. {key}=/shared/{p.lstrip('./') or 'runs'}.",
                key,
            )


def prepare_job(job: Job, command: str = "pretrain") -> Job:
    """The job as the cluster runs it: it joins the cluster it runs on (``cluster.address=auto``)
    and gets a run name now, so that the run directory can be printed here."""
    if job.cluster.address not in (None, "auto"):
        raise ConfigError(
            f"cluster.address={job.cluster.address!r}: a submitted job runs on the cluster it is "
            "submitted to. Leave cluster.address unset and pass the dashboard as --address.",
            "cluster.address",
        )
    check_cluster_paths(job)
    job.cluster.address = "auto"
    if not job.run.dir and not job.run.name:
        job.run.name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    return job


def run_dir_on_cluster(job: Job) -> str:
    return job.run.dir or f"{job.run.root.rstrip('/')}/{job.run.name}"


def package_dirs() -> dict[str, Path]:
    """This checkout's packages (what is shipped as ``py_modules``); found without importing."""
    from importlib.util import find_spec

    dirs = {}
    for name in SHIPPED_PACKAGES:
        spec = find_spec(name)
        assert spec is not None and spec.submodule_search_locations, name
        dirs[name] = Path(next(iter(spec.submodule_search_locations)))
    return dirs


@dataclass
class Submission:
    """Everything ``submit_job`` gets; ``--dry-run`` prints it."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    upload: Upload

    def plan(self, address: str) -> dict[str, Any]:
        return {
            "address": address,
            "entrypoint": self.entrypoint,
            "runtime_env": self.runtime_env,
            "metadata": self.metadata,
            "upload": {
                "files": len(self.upload.files),
                "mib": round(self.upload.total_bytes / 2**20, 2),
            },
        }


def build_submission(
    job: Job,
    working_dir: Path,
    *,
    ship_code: bool = True,
    pip: Sequence[str] = (),
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    command: str = "pretrain",
) -> Submission:
    """Write ``config.yaml`` into ``working_dir`` and describe the job for the Job Submission API
    (``command``: ``pretrain``, ``simulate``, or ``tune`` for a tune config)."""
    (working_dir / CONFIG_NAME).write_text(to_yaml(job))
    dirs = {"working_dir": working_dir}
    runtime_env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": list(EXCLUDES),
        # No env_vars here: `fedray pretrain`'s ray.init and Flower's (flwr-simulation) set
        # their own, and Ray refuses a driver runtime env that repeats a key of the job's.
    }
    if ship_code:
        code = package_dirs()
        dirs.update(code)
        runtime_env["py_modules"] = [str(p) for p in code.values()]
    if pip:
        runtime_env["pip"] = list(pip)
    upload = scan_upload(dirs)
    check_upload_size(upload, max_upload_mb)
    return Submission(
        # `python -m` rather than the `fedray` script: the shipped py_modules come first on
        # sys.path, the script would be whatever the image installed.
        entrypoint=f"python -m orchestrator.cli {command} {CONFIG_NAME}",
        runtime_env=runtime_env,
        metadata={"fedray_run_dir": run_dir_on_cluster(job), "fedray_command": command},
        upload=upload,
    )


__all__ = [
    "JOB_SCHEMAS",
    "Job",
    "Submission",
    "Upload",
    "build_submission",
    "check_cluster_paths",
    "check_upload_size",
    "prepare_job",
    "scan_upload",
    "submit_command",
]
