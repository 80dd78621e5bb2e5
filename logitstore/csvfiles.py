"""Reading local data files without surprises: the checks and options around the
``datasets`` csv/json/parquet builders that logitstore/data.py uses.

- A CSV header naming a column twice (``text,text,label``) is refused: pandas would
  rename the second one ``text.1`` and the build would silently use the first.
- Only an empty field is a missing value. pandas-style NA parsing would turn the words
  "NA", "null", "nan", "None", "N/A"... into missing values; they are text (or labels).
- A file that is not UTF-8, or a CSV row with more fields than the header, is reported
  as one DataError naming the file and the problem, not as "DatasetGenerationError".
"""
from __future__ import annotations

import codecs
import contextlib
import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from logitstore.errors import DataError


def csv_options() -> dict[str, Any]:
    """Options of the datasets csv builder (passed on to pandas.read_csv): no default NA
    strings; an empty field is the only missing value."""
    return {"keep_default_na": False, "na_values": [""]}


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence the datasets logger's "Failed to read file ..." line: the error that follows
    (read_error) says the same in one line."""
    import logging

    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_header(path: Path) -> None:
    """Refuse a CSV whose header names a column twice, or that is not UTF-8 there."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}: the header names column {name!r} twice; rename one of them "
                            "(each column must have its own name)")
        seen.add(name)


def _first_bad_byte(path: Path) -> tuple[int, int] | None:
    """(offset, byte) of the first byte of ``path`` that is not valid UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return done + exc.start, block[exc.start]
            done += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return done, 0
    return None


def _not_utf8(path: Path) -> DataError:
    where = _first_bad_byte(path)
    at = f" (byte 0x{where[1]:02x} at offset {where[0]:,})" if where else ""
    return DataError(f"{path} is not UTF-8 text{at}; save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def read_error(exc: BaseException, builder: str, files: Sequence[Path]) -> DataError:
    """The one-line DataError for a ``datasets`` builder failure ``exc`` on ``files``."""
    causes = _causes(exc)
    if any(isinstance(c, UnicodeDecodeError) for c in causes):
        bad = [f for f in files if _first_bad_byte(f) is not None]
        return _not_utf8(bad[0] if bad else files[0])
    root = causes[-1]
    where = str(files[0]) if len(files) == 1 else f"one of {', '.join(map(str, files))}"
    text = " ".join(str(root).split())
    if type(root).__name__ == "ParserError":  # pandas: a row with more fields than the header
        text = text.split("C error: ", 1)[-1]
        return DataError(f"{where} is not a well-formed CSV: {text}; fix that row (quote fields that hold "
                         "commas) or remove it")
    return DataError(f"cannot read {where} as {builder} ({type(root).__name__}: {text[:200]}); check the file's format")
