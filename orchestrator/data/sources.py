"""Read local text data: plain text, JSONL/JSON, CSV and Parquet, or the bundled demo corpora.

Nothing is downloaded: CSV/Parquet/JSON go through ``datasets`` on local paths only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from orchestrator.config.loader import ConfigError

TEXT_SUFFIXES = (".txt", ".md")
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SUPPORTED = TEXT_SUFFIXES + TABLE_SUFFIXES


def demo_path(name: str) -> Path:
    """Path of a bundled demo file (``kjv_pentateuch.txt``, ``tweets_sentiment.csv``)."""
    return Path(str(resources.files("orchestrator.data").joinpath("demo", name)))


DEMO_PRETRAIN = "kjv_pentateuch.txt"
DEMO_LABELLED = "tweets_sentiment.csv"


def resolve_files(paths: Sequence[str], key: str = "data.paths") -> list[Path]:
    """Expand files and directories into a sorted list of supported files (errors name ``key``)."""
    if not paths:
        return [demo_path(DEMO_PRETRAIN)]
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise ConfigError(
                f"{key}: {raw!r} does not exist. Give existing local files or directories "
                f"({', '.join(SUPPORTED)}), or leave {key} empty for the bundled demo corpus.",
                key,
            )
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUPPORTED)
            if not found:
                raise ConfigError(
                    f"{key}: directory {raw!r} holds no {', '.join(SUPPORTED)} files.", key
                )
            files.extend(found)
        elif p.suffix in SUPPORTED:
            files.append(p)
        else:
            raise ConfigError(
                f"{key}: {raw!r} has unsupported suffix {p.suffix!r}; "
                f"supported: {', '.join(SUPPORTED)}.",
                key,
            )
    return files


def fingerprint(files: Sequence[Path]) -> str:
    """Content hash of the files (cache key): changes whenever any byte changes."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        try:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            raise unreadable(f, e) from e
    return h.hexdigest()[:16]


def load_table(path: Path):
    import datasets

    kinds = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if path.suffix not in kinds:
        raise ConfigError(
            f"data file {str(path)!r} has unsupported suffix {path.suffix!r}; "
            f"supported: {', '.join(SUPPORTED)}."
        )
    if not path.is_file():
        raise ConfigError(f"data file {str(path)!r} does not exist or is not a file.")
    kind = kinds[path.suffix]
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for malformed files
        raise ConfigError(
            f"data file {str(path)!r} could not be read as {kind}: {type(e).__name__}: {e}. "
            "Check that the file is well-formed."
        ) from e


def require_text_column(ds, path: Path, text_field: str) -> None:
    """A table without the configured text column is a ConfigError naming ``data.text_field``."""
    if text_field not in ds.column_names:
        raise ConfigError(
            f"data file {str(path)!r} has no column {text_field!r} "
            f"(columns: {', '.join(ds.column_names)}). Set data.text_field to one of them.",
            "data.text_field",
        )


def read_text_file(path: Path) -> str:
    """A whole text file (undecodable bytes replaced); an unreadable one is a ConfigError."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise unreadable(path, e) from e


def unreadable(path: Path, e: OSError) -> ConfigError:
    return ConfigError(
        f"data file {str(path)!r} cannot be read: {e.strerror or e}. Check its permissions "
        "(it must be readable by the user running fedray), or remove it from data.paths.",
        "data.paths",
    )


def iter_column(ds, text_field: str, batch_size: int = 1024) -> Iterator[str]:
    """The non-empty values of ``text_field``, streamed in batches (never the whole column)."""
    for batch in ds.select_columns([text_field]).iter(batch_size=batch_size):
        for value in batch[text_field]:
            if value:
                yield str(value)


def iter_texts(files: Sequence[Path], text_field: str = "text") -> Iterator[str]:
    """Yield documents: a whole ``.txt`` file is one document; tables yield one per row."""
    for f in files:
        if f.suffix in TEXT_SUFFIXES:
            yield read_text_file(f)
            continue
        ds = load_table(f)
        require_text_column(ds, f, text_field)
        yield from iter_column(ds, text_field)


PIECE_CHARS = 100_000
"""Documents are tokenized in pieces of about this many characters, cut after a line break."""


def split_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut a long document after the first line break at or beyond every ``size`` characters,
    so the tokenizer works on bounded pieces (a document without line breaks stays whole)."""
    if len(text) <= size:
        return [text]
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        out.append(text[start:end])
        start = end
    return out


def _stream_text_file(path: Path, size: int, read_chars: int) -> Iterator[str]:
    """``split_pieces(read_text_file(path))`` without holding the file in memory."""
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise unreadable(path, e) from e
    with fh:
        buf, eof, scanned = "", False, size
        while True:
            cut = buf.find("\n", scanned)
            if cut != -1:
                yield buf[: cut + 1]
                buf, scanned = buf[cut + 1 :], size
                continue
            if eof:
                break
            scanned = max(size, len(buf))  # no line break up to here: do not scan it again
            try:
                more = fh.read(read_chars)
            except OSError as e:
                raise unreadable(path, e) from e
            eof = not more
            buf += more
        if buf:
            yield buf


def iter_pieces(
    files: Sequence[Path],
    text_field: str = "text",
    size: int = PIECE_CHARS,
    read_chars: int = 1 << 20,
) -> Iterator[tuple[str, bool]]:
    """``(piece, ends_document)`` for every document of :func:`iter_texts`, split as
    :func:`split_pieces` does; a ``.txt`` file is read incrementally, a table column in batches,
    so memory stays bounded whatever the corpus size. An empty document is one empty piece."""
    for f in files:
        if f.suffix in TEXT_SUFFIXES:
            prev: str | None = None
            for piece in _stream_text_file(f, size, read_chars):
                if prev is not None:
                    yield prev, False
                prev = piece
            yield (prev if prev is not None else ""), True
            continue
        ds = load_table(f)
        require_text_column(ds, f, text_field)
        for text in iter_column(ds, text_field):
            pieces = split_pieces(text, size)
            for i, piece in enumerate(pieces):
                yield piece, i == len(pieces) - 1


Columns = tuple[tuple[str, ...], tuple[str, ...] | None, tuple[str, ...] | None]


def read_columns(path: str, text_field: str, label_field: str, extra_column: str) -> Columns:
    """Texts, labels and one extra column of a labelled file (None when a column is absent),
    cached per process while the file is unchanged (a site reads it every round). A
    ``.txt``/``.md`` file is one example per non-empty line, no labels.

    A missing text column is a :class:`ConfigError` naming ``data.text_field``; callers decide
    whether a missing label or extra column is an error (a causal-LM site needs no labels).
    """
    try:
        st = Path(path).stat()
    except OSError as e:
        raise ConfigError(f"data file {path!r} cannot be read: {e.strerror}.") from e
    return _read_columns(path, st.st_mtime_ns, st.st_size, text_field, label_field, extra_column)


@lru_cache(maxsize=4)
def _read_columns(
    path: str, mtime_ns: int, size: int, text_field: str, label_field: str, extra_column: str
) -> Columns:
    p = Path(path)
    if p.suffix in TEXT_SUFFIXES:
        if not p.is_file():
            raise ConfigError(f"data file {path!r} does not exist or is not a file.")
        lines = tuple(x for x in p.read_text(encoding="utf-8", errors="replace").splitlines() if x)
        return lines, None, None
    ds = load_table(p)
    require_text_column(ds, p, text_field)

    def col(name: str) -> tuple[str, ...] | None:
        if not name or name not in ds.column_names:
            return None
        return tuple("" if v is None else str(v) for v in ds[name])

    return col(text_field) or (), col(label_field), col(extra_column)
