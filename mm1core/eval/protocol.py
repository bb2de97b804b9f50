"""Fingerprints of evaluation protocols: two results are comparable only if they were scored the same way.

`evaluate` records each metric family's protocol (template, k, decoding, items, eval-set seed, scorer). A results row
carries one short hash per family as `protocol/<family>`; a report compares two arms on a family's metrics only
where their fingerprints agree.
"""

from __future__ import annotations

import hashlib
import json
import re

__all__ = ["PROTOCOL_PREFIX", "metric_family", "protocol_fingerprints"]

PROTOCOL_PREFIX = "protocol/"
_SHOTS = re.compile(r"^\d+shot$")


def protocol_fingerprints(protocol: dict[str, dict]) -> dict[str, str]:
    """{"protocol/<family>": a short hash of that family's evaluation protocol}."""
    return {
        f"{PROTOCOL_PREFIX}{family}": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[
            :12
        ]
        for family, spec in protocol.items()
    }


def metric_family(metric: str) -> str:
    """The protocol family a metric belongs to: `0shot/vqa/color` -> `0shot`, `textcore/avg` -> `textcore`, a file
    task's `digits/4shot/vqa` -> `digits/4shot`."""
    parts = metric.split("/")
    if len(parts) > 2 and _SHOTS.match(parts[1]) and not _SHOTS.match(parts[0]):
        return "/".join(parts[:2])
    return parts[0]
