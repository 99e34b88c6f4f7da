"""Reading Prometheus text in tests."""

from __future__ import annotations


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None if it is not there."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return None
