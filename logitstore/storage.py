"""Where a store lives: a local folder, or a URL of any fsspec backend (``s3://``, ``gs://``...).

    location("logits.zarr")                -> Path("logits.zarr")      a local folder
    location("file://runs/logits.zarr")    -> Path("runs/logits.zarr")  the same, as a URL
    location("s3://bucket/logits.zarr")    -> "s3://bucket/logits.zarr" object storage

Every command that takes a store passes it through :func:`location` and reaches the bytes
only through :func:`zarr_store` (zarr's LocalStore, or zarr's FsspecStore for a URL: no
client of our own). ``file://`` URLs are local folders, with the local lock and checks.

A URL's backend is installed separately (``pip install 'logitstore[s3]'`` for s3://) and
imported only when a URL is opened, so local use imports no cloud client. Credentials and
the endpoint come from the backend's standard environment (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/config``, ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3``); anything else goes in ``LOGITSTORE_STORAGE_OPTIONS``, a JSON
object passed to the backend as fsspec storage options, e.g.
``{"endpoint_url": "http://127.0.0.1:9000", "anon": false}``.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from logitstore.errors import LogitStoreError, StorageError, StoreCorruptError

#: Environment variable holding the fsspec storage options (a JSON object) for store URLs.
OPTIONS_ENV = "LOGITSTORE_STORAGE_OPTIONS"
#: Storage options every URL gets unless LOGITSTORE_STORAGE_OPTIONS says otherwise.
DEFAULT_OPTIONS = {"use_listings_cache": False}
#: URL schemes with an extra of this package that installs their backend.
EXTRAS = {"s3": "s3", "s3a": "s3"}


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for a store on an fsspec backend other than the local disk (``s3://...``)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def location(path: str | os.PathLike[str]) -> Path | str:
    """A store argument as the code uses it: a Path for a local folder (``file://`` URLs
    included), the URL itself (without a trailing ``/``) for anything else."""
    text = str(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return text.rstrip("/") if is_url(text) else Path(text)


def storage_options() -> dict[str, Any]:
    """The fsspec storage options: ``LOGITSTORE_STORAGE_OPTIONS`` over the default, which
    turns fsspec's listings cache off (a reader that stays open sees the nodes a build adds
    later, e.g. a new checkpoint). Raises StorageError when the variable is not a JSON object."""
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    if not raw:
        return dict(DEFAULT_OPTIONS)
    try:
        options = json.loads(raw)
    except ValueError as exc:
        raise StorageError(f"{OPTIONS_ENV} is not valid JSON ({exc}); set it to a JSON object such as "
                                  '\'{"endpoint_url": "http://127.0.0.1:9000"}\'') from None
    if not isinstance(options, dict):
        raise StorageError(f"{OPTIONS_ENV} must be a JSON object; got {type(options).__name__} instead")
    return {**DEFAULT_OPTIONS, **options}


def _backend(url: str, make: Any) -> Any:
    """``make()`` with a missing backend package turned into one line naming what to install."""
    try:
        return make()
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        fix = f"pip install 'logitstore[{EXTRAS[scheme]}]'" if scheme in EXTRAS else f"install it ({exc})"
        raise StorageError(f"store {url} needs the fsspec backend for {scheme}://, which is not installed: "
                                  f"{fix}") from None


def zarr_store(path: str | os.PathLike[str], writable: bool = False) -> Any:
    """The zarr store at ``path``: zarr's LocalStore for a folder, zarr's FsspecStore for a
    URL (storage options from :func:`storage_options`). Raises StorageError when
    the URL's backend is not installed."""
    where = location(path)
    if isinstance(where, Path):
        from zarr.storage import LocalStore

        return LocalStore(where, read_only=not writable)
    from zarr.storage import FsspecStore

    options = storage_options()
    return _backend(where, lambda: FsspecStore.from_url(where, storage_options=options,
                                                        read_only=not writable))


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    return _backend(url, lambda: fsspec.core.url_to_fs(url, **storage_options()))


@contextlib.contextmanager
def _reaching(url: str) -> Iterator[None]:
    """Turn a backend's failure to answer (no endpoint, no credentials, access denied) into
    one StorageError line naming where the settings come from."""
    try:
        yield
    except (LogitStoreError, FileNotFoundError):
        raise
    except Exception as exc:  # botocore, aiohttp and fsspec errors have no common base
        why = str(exc).splitlines()[0] if str(exc) else ""
        raise StorageError(f"cannot reach store {url} ({type(exc).__name__}: {why}); check the endpoint and "
                           f"credentials (AWS_ENDPOINT_URL, AWS_* variables, ~/.aws) and {OPTIONS_ENV}") from exc


def holds_store(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has a root ``zarr.json`` (something zarr wrote). Raises
    StorageError when the URL's backend does not answer."""
    where = location(path)
    if isinstance(where, Path):
        return (where / "zarr.json").is_file()
    fs, root = _fs(where)
    with _reaching(where):
        return bool(fs.isfile(f"{root}/zarr.json"))


def is_empty(path: str | os.PathLike[str]) -> bool:
    """True when nothing is at ``path`` yet (a missing or empty folder, no object under the URL)."""
    where = location(path)
    if isinstance(where, Path):
        return not where.exists() or (where.is_dir() and not any(where.iterdir()))
    fs, root = _fs(where)
    with _reaching(where):
        return not fs.exists(root) or not fs.ls(root)


def nbytes(path: str | os.PathLike[str], prefix: str = "", skip: Any = None) -> int:
    """Bytes stored under ``path``/``prefix``: file sizes on disk, or the sizes of the objects
    under the URL from one listing (fsspec ``find`` with details: ``du`` of an async backend
    asks for each object's size once more, ~18x slower measured on S3). ``skip(parts)``: leave
    out the files whose path parts below ``prefix`` it is true for."""
    where = location(path)
    if isinstance(where, Path):
        root = where / prefix
        if not root.exists():
            return 0
        return sum(p.stat().st_size for p in root.rglob("*")
                   if p.is_file() and not (skip and skip(p.relative_to(root).parts)))
    fs, root = _fs(where)
    base = "/".join(filter(None, (root, prefix)))
    try:
        with _reaching(where):
            found = fs.find(base, detail=True)
    except FileNotFoundError:
        return 0
    return sum(int(info.get("size") or 0) for key, info in found.items()
               if not (skip and skip(tuple(key[len(base):].strip("/").split("/")))))


def not_a_store(path: str | os.PathLike[str]) -> StoreCorruptError | None:
    """The error for opening ``path`` as a store when nothing zarr wrote is there, else None."""
    if holds_store(path):
        return None
    if is_empty(path):
        return StoreCorruptError(f"no store at {path}; build one with `logitstore build --out {path}`")
    return StoreCorruptError(f"{path} is not a logit store (no zarr.json in it); pass the folder or URL that "
                             "`logitstore build --out` wrote")
