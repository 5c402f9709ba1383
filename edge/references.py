"""The tools' references on disk, so that an edge restart does not wait weeks for them.

A tool's reference (``shared.reference``) is only formed when the tool comes back up from
maintenance or a repair, every few weeks. Losing it on a restart would leave the model without
it until then, so the daemon writes every tracker to ``<state_dir>/references.json`` at each
housekeeping run and on stop, and reads it back at start. The write is atomic (a temporary
file, fsync, rename): a crash leaves the previous file whole. A file that does not parse is
set aside as ``references.json.bad`` and the edge starts without references, never guessing.
Restored trackers forget themselves when the first new row comes more than
``shared.reference.MAX_GAP_S`` after the last saved one: maintenance may have happened unseen.
The file also keeps each tool's "watching" tracker (``edge.windows``: the edge's first readings
of a tool without a reference, what an alert's evidence falls back on), under the same rule, so
that a short restart does not make the readings of a tool already degrading its new baseline.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)
FORMAT = "fabpm-references/1"


def save(path: Path, states: dict[str, Any]) -> None:
    """Write ``states`` (``Pipeline.reference_states()``) atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump({"format": FORMAT, **states}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    """The saved states, or None when there are none or the file is unusable (then set aside)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if not isinstance(data.get("step_s"), int | float) or not isinstance(data.get("rows"), int):
            raise ValueError("step_s and rows must be numbers")
        if not isinstance(data.get("tools"), dict):
            raise ValueError(f"not a {FORMAT} file")
    except (OSError, ValueError) as exc:
        bad = path.with_name(path.name + ".bad")
        _logger.error("%s unusable (%s): set aside as %s; tools start without references", path, exc, bad)
        try:
            os.replace(path, bad)
        except OSError:
            pass
        return None
    return data
