"""Keep-list source: image references to keep, read from files (`keep.lists`) into the snapshot.

For images used where no scanned cluster shows them (ECS, Lambda, a CI cache, another team's
cluster). The format is werf's `--keep-list`: one image reference per line; blank lines and
`#` comments (a whole line, or the rest of one) are skipped. A list is a local path (anchored to
the config file's directory by tasks/config/models.py) or any fsspec URL (`s3://bucket/keep.txt`,
with the same credentials the store uses).

Each reference is recorded as a row of KEEP_LIST (file, line, image), so a plan reads the lists
as they were when the snapshot was taken: it stays a function of stored inputs. The plan matches
them as it matches workload images (tasks/plan/references.py): by tag and by digest, registry
hosts normalised, aliases. Fail closed: a list that cannot be read whole (missing, unreadable,
not UTF-8, over the bounds, a line that is no image reference) fails the source, so the
snapshot is incomplete and no plan made from it deletes anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from tasks.common.errors import SourceError
from tasks.common.progress import reporter
from tasks.config.models import RegsweepConfig
from tasks.store.store import Store
from tasks.oci.reference import parse_reference
from tasks.store.schemas import KEEP_LIST, from_rows

if TYPE_CHECKING:
    import pyarrow as pa


#: Bounds on one keep list: bytes read and references kept (a list is a human's, not a dump).
MAX_BYTES = 10 * 1024 * 1024
MAX_LINES = 100_000
#: Longer than any valid reference (name 255, tag 128, digest 71+): refused without parsing.
MAX_LINE_CHARS = 1024


class KeepListError(SourceError):
    """A keep list could not be read whole; names the list (and the line, where one is at fault)."""

    source = "keeplist"

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(f"keep list {where}: {message}")


def read_bytes(spec: str) -> bytes:
    """The bytes of one keep list (a path or an fsspec URL), at most MAX_BYTES of them."""
    import fsspec

    try:
        with fsspec.open(spec, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise KeepListError(spec, "does not exist") from None
    except IsADirectoryError:
        raise KeepListError(spec, "is a directory, not a file") from None
    except Exception as e:   # any failure to read (permissions, network, unknown protocol) fails closed
        reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise KeepListError(spec, f"cannot be read ({reason})") from None
    if len(data) > MAX_BYTES:
        raise KeepListError(spec, f"is larger than {MAX_BYTES // (1024 * 1024)} MiB; a keep list is bounded "
                                  f"to {MAX_BYTES // (1024 * 1024)} MiB and {MAX_LINES:,} references")
    return data


def parse(spec: str, data: bytes) -> list[tuple[str, int, str]]:
    """(file, line, image) per reference of one keep list; KeepListError for anything that is not one."""

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise KeepListError(spec, f"is not UTF-8 text (byte {e.start})") from None
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        image = raw.split("#", 1)[0].strip()
        if not image:
            continue
        where = f"{spec}:{number}"
        if len(image) > MAX_LINE_CHARS:
            raise KeepListError(where, f"a line of {len(image)} characters is no image reference")
        try:
            parse_reference(image)
        except ValueError as e:
            raise KeepListError(where, str(e)) from None
        rows.append((spec, number, image))
        if len(rows) > MAX_LINES:
            raise KeepListError(spec, f"holds more than {MAX_LINES:,} references, the bound of one keep list")
    return rows


def scan(lists: list[str]) -> list[tuple[str, int, str]]:
    """Every reference of every keep list, in list and line order."""
    rows = [row for spec in lists for row in parse(spec, read_bytes(spec))]
    reporter().finish("keeplist", f"Keep lists: {len(rows)} image references in {len(lists)} list(s)")
    return rows


def extract(config: "RegsweepConfig", store: "Store", now: datetime) -> dict[str, "pa.Table"]:
    """The `keep_list` table of a snapshot (schema KEEP_LIST)."""

    return {"keep_list": from_rows(scan(config.keep.lists), KEEP_LIST)}
