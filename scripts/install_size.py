"""Installed size of every distribution the running interpreter sees (pip, setuptools and wheel left out),
biggest first, in MB (10^6 bytes): `VENV/bin/python scripts/install_size.py` after
`VENV/bin/pip install 'WHEEL[ort]'`."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

INSTALLER = {"pip", "setuptools", "wheel"}  # the venv's tools, not something lineside needs


def installed_sizes() -> dict[str, int]:
    """Bytes per distribution: the files its RECORD lists, as they are on disk now."""
    sizes: dict[str, int] = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name.lower() in INSTALLER or name in sizes:  # the first on sys.path is the one imported
            continue
        paths = (Path(str(d.locate_file(f))) for f in d.files or [])
        sizes[name] = sum(p.stat().st_size for p in paths if p.is_file())
    return sizes


def main() -> None:
    sizes = installed_sizes()
    for name, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"{n / 1e6:9.1f}  {name}")
    print(f"{sum(sizes.values()) / 1e6:9.1f}  total MB ({len(sizes)} distributions)")


if __name__ == "__main__":
    main()
