"""Reading a JSON file someone else may have written: bounded, and every failure one UserError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeprune.errors import UserError

# Far above any report, plan or checkpoint edgeprune writes; a larger file is not one of them.
MAX_JSON_BYTES = 64 << 20


def read_json(path: Path, fix: str) -> Any:
    """The parsed file; ``fix`` ends the one-line error (``"pass the plan.json edgeprune wrote"``).

    ``json.loads`` raises ValueError for a number of thousands of digits as well as for bad
    syntax, and RecursionError for deep nesting: both are bad input here, not bugs.
    """
    # At most the cap and one byte are read: a file of gigabytes is refused without being read whole.
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); {fix}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise UserError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MiB, far above any file edgeprune writes; {fix}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:120]
        raise UserError(f"{path} is not valid JSON ({reason}); {fix}") from None
