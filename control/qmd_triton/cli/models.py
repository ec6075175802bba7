"""``qmdctl models list|download|check``: the model registry and ModelScope downloads."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from qmd_triton.artifacts.registry import ROLES, check, download, load_registry, profile
from qmd_triton.cli.common import State, emit_json, pass_state


def registry_options(f: Callable) -> Callable:
    options = [
        click.option("--profile", "profile_name", default="small", show_default=True, envvar="QMD_PROFILE",
                     show_envvar=True, help="Registry profile: small (PyPI, English, CPU), multilingual "
                                            "(ModelScope, CPU) or full (ModelScope, GPU)."),
        click.option("--only", "roles", type=click.Choice(ROLES), multiple=True, help="Only these roles (repeatable)."),
        click.option("--registry", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     envvar="QMD_MODEL_REGISTRY", show_envvar=True,
                     help="Registry file. [default: the one shipped with qmd-triton]"),
        click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     envvar="QMD_MODELS_DIR", show_envvar=True, help="Where downloads go. [default: $QMD_HOME/models]"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _entries(profile_name: str, roles: tuple[str, ...], registry: Path | None):
    entries = profile(profile_name, registry)
    return [e for e in entries if not roles or e.role in roles]


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:,.1f} MB"


@click.group()
def models() -> None:
    """List, download and check the models of a registry profile."""


@models.command("list")
@click.option("--registry", type=click.Path(dir_okay=False, path_type=Path), default=None, envvar="QMD_MODEL_REGISTRY",
              show_envvar=True, help="Registry file. [default: the one shipped with qmd-triton]")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models_list(registry: Path | None, as_json: bool) -> None:
    """List every profile's models: role, source, id and revision, size, and the languages each reads."""
    rows = [{"profile": e.profile, "role": e.role, "name": e.name, "source": e.source, "id": e.id,
             "revision": e.revision, "size": e.size, "sha256_known": bool(e.files), "note": e.note,
             "languages": list(e.languages)}
            for entries in load_registry(registry).values() for e in entries]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        rev = f"@{r['revision']}" if r["source"] == "modelscope" else ""
        langs = ",".join(r["languages"]) if len(r["languages"]) <= 3 else f"{len(r['languages'])} languages"
        click.echo(f"{r['profile']:<12} {r['role']:<10} {r['name']:<38} {r['source']:<10} {r['id']}{rev}  "
                   f"{_mb(r['size'])}  reads {langs}")


@models.command("download")
@registry_options
@click.option("--endpoint", default=None, envvar="MODELSCOPE_ENDPOINT", show_envvar=True,
              help="ModelScope hub URL. [default: https://www.modelscope.cn]")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the hub to answer.")
@pass_state
def models_download(state: State, profile_name: str, roles: tuple[str, ...], registry: Path | None,
                    models_dir: Path | None, endpoint: str | None, timeout: float) -> None:
    """Download a profile's models (resuming partial files) and verify every file's sha256."""
    target = models_dir or state.settings().models_path
    for e in _entries(profile_name, roles, registry):
        started = time.monotonic()
        result = download(e, target, endpoint=endpoint, timeout=timeout, progress=state.progress)
        click.echo(f"{e.role:<10} {e.name:<38} {result.status:<7} {_mb(result.size):>12}  "
                   f"{time.monotonic() - started:.1f}s  {result.path}")


@models.command("check")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def models_check(state: State, profile_name: str, roles: tuple[str, ...], registry: Path | None,
                 models_dir: Path | None, as_json: bool) -> None:
    """Report each model as OK, missing or corrupt (sha256 of every file), with its size.

    Exits with status 1 unless every model is OK.
    """
    target = models_dir or state.settings().models_path
    results = [check(e, target) for e in _entries(profile_name, roles, registry)]
    if as_json:
        emit_json([{"role": r.entry.role, "name": r.entry.name, "status": r.status, "size": r.size,
                    "path": str(r.path), "detail": r.detail} for r in results])
    else:
        for r in results:
            detail = f"  ({r.detail})" if r.detail else ""
            click.echo(f"{r.entry.role:<10} {r.entry.name:<38} {r.status:<7} {_mb(r.size):>12}{detail}")
    if any(r.status != "OK" for r in results):
        raise SystemExit(1)


