"""The engine's version, in one place: the installed distribution's, else the source tree's.

It goes into every manifest and every job fingerprint, so outputs written by another engine
version are recomputed rather than trusted.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "mapreduce-engine"
FALLBACK = "0.1.0"  # keep equal to pyproject.toml's version; used when the package is not installed


def _installed() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return FALLBACK


ENGINE_VERSION: str = _installed()

__all__ = ["ENGINE_VERSION"]
