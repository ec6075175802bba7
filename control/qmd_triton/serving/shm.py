"""The shared-memory regions of the local server's backend stubs, in ``/dev/shm``.

Each python backend stub (and each stub of the Python-based ``onnxruntime`` backend, which runs on the python
backend) talks to tritonserver through one region, ``/dev/shm/<prefix><uuid>`` (4 MiB and more). tritonserver
unlinks them when it exits cleanly; a server killed with SIGKILL (or one whose stubs were) leaves them behind
for good, in memory. So every server ``server.start`` launches gets a prefix of its own (the python backend's
``shm-region-prefix-name``, which the Python-based backends share), recorded in its state, and its regions are
unlinked once none of its processes is left: in ``qmdctl down``, when ``up`` replaces the record of a server
that died, and when the supervisor restarts one. Only names of that exact form are ever unlinked, so a region
of a server qmd did not start is never touched.

A prefix names the home it was started from (``qmd_<home tag>_``) and the start (8 random hex digits). It
keeps Triton's own ``triton_python_backend_shm_region_`` in front, the prefix whose regions newer Triton
versions refuse to register through the shared-memory API.

Example:
    >>> prefix = new_prefix(Path("/home/me/.local/share/qmd"))
    >>> prefix
    'triton_python_backend_shm_region_qmd_1f0c9a2b_7d41e3aa_'
    >>> release(prefix)   # once the server that used it is gone: how many regions were unlinked
    12
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

SHM_DIR = Path("/dev/shm")
TRITON_PREFIX = "triton_python_backend_shm_region_"  # the python backend's default
_OURS = re.compile(rf"^{TRITON_PREFIX}qmd_[0-9a-f]{{8}}_[0-9a-f]{{8}}_$")


def home_tag(home: Path) -> str:
    """8 hex digits that name a home (its resolved path) in the prefixes of its servers."""
    return hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:8]


def new_prefix(home: Path) -> str:
    """A region prefix for one start of a server of ``home``."""
    return f"{TRITON_PREFIX}qmd_{home_tag(home)}_{secrets.token_hex(4)}_"


def is_ours(prefix: str) -> bool:
    """Whether ``prefix`` has the form ``new_prefix`` gives (anything else is never unlinked)."""
    return bool(_OURS.match(prefix))


def backend_flags(prefix: str) -> list[str]:
    """The tritonserver flag that gives the python backend, and the Python-based backends on it, ``prefix``."""
    return [f"--backend-config=python,shm-region-prefix-name={prefix}"]


def regions(prefix: str) -> list[Path]:
    """The regions in ``/dev/shm`` named with ``prefix`` (none for a prefix that is not ours)."""
    if not is_ours(prefix):
        return []
    try:
        return sorted(p for p in SHM_DIR.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


def home_regions(home: Path) -> list[Path]:
    """The regions of every server started from ``home`` that are still in ``/dev/shm``."""
    start = f"{TRITON_PREFIX}qmd_{home_tag(home)}_"
    try:
        return sorted(p for p in SHM_DIR.iterdir() if p.name.startswith(start) and is_ours(p.name[:len(start) + 9]))
    except OSError:
        return []


def release(prefix: str) -> int:
    """Unlinks the regions named with ``prefix`` (call it once no process of their server is left); how many."""
    count = 0
    for path in regions(prefix):
        try:
            path.unlink()
            count += 1
        except FileNotFoundError:
            pass
    return count
