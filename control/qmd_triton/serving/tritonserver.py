"""The local tritonserver's files: the binary of the ``nvidia-pytriton`` wheel, the backend directory assembled
for it (pytriton's python backend, the stub for the running Python, the project's Python-based backends) and
the environment it runs in. ``server.py`` starts it with these; the container entry point runs its own.

Example:
    >>> binary = pytriton_dir() / "bin" / "tritonserver"
    >>> backends = assemble_backends(Path("/tmp/backends"))
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from qmd_triton.errors import ServerError
from qmd_triton.settings import PACKAGE_DIR, Settings

STUB = "triton_python_backend_stub"


def pytriton_dir() -> Path:
    """``<site-packages>/pytriton/tritonserver`` of the installed wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("tritonserver is not installed; `pip install nvidia-pytriton==0.7.0`")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"{root}/bin/tritonserver is missing; reinstall nvidia-pytriton")
    return root


def project_backends_dir() -> Path:
    """The project's Python-based backends shipped inside the package."""
    return PACKAGE_DIR / "serving" / "backends"


def assemble_backends(target: Path) -> Path:
    """Builds the ``--backend-directory`` for the local server and returns it.

    Rebuilt on every start (cheap: links and one small copy) so that an upgraded
    wheel or project never leaves a stale stub behind.
    """
    root = pytriton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        raise ServerError(f"pytriton ships no python backend stub for Python {version}")
    if target.exists():
        shutil.rmtree(target)
    python = target / "python"
    python.mkdir(parents=True)
    # Copies, not links: Triton refuses backend libraries that resolve outside the backend dir.
    for f in (root / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, python / f.name)
    shutil.copy2(stub, python / stub.name)
    for backend in project_backends_dir().iterdir():
        if (backend / "model.py").is_file():
            (target / backend.name).mkdir()
            shutil.copy2(backend / "model.py", target / backend.name / "model.py")
    return target


def server_environment(settings: Settings | None = None) -> dict[str, str]:
    """PATH led by this venv's bin (the stub finds site-packages through it) and libpython on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    # The copied stub loses its RPATH to the wheel's bundled libraries (libcudart, ...).
    bundled = str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, bundled, env.get("LD_LIBRARY_PATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    if settings is not None:
        # The search models find the index the way the CLI does: through QMD_HOME.
        env["QMD_HOME"] = str(settings.home.resolve())
    return env

