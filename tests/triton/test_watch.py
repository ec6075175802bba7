"""`qmdctl watch`: an edit, a new file and a removal show up in search within seconds, without `update`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.settings import Settings

from ..conftest import ASSETS


def test_watch_reindexes_and_reembeds_edits_additions_and_removals(triton: Settings, tmp_path: Path):
    notes = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    env = {"QMD_HOME": str(tmp_path / "home"), "QMD_HTTP_PORT": str(triton.http_port),
           "QMD_GRPC_PORT": str(triton.grpc_port), "QMD_METRICS_PORT": str(triton.metrics_port)}
    assert CliRunner().invoke(cli, ["collection", "add", str(notes), "--name", "notes"], env=env).exit_code == 0

    def files(*args: str) -> list[str]:
        result = CliRunner().invoke(cli, [*args, "--format", "json"], env=env)
        return [h["file"] for h in json.loads(result.stdout)] if result.exit_code == 0 else []

    def eventually(check, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.2)
        return False

    proc = subprocess.Popen([sys.executable, "-c", "from qmd_triton.cli import main; main()", "watch",
                             "--debounce-ms", "300"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert eventually(lambda: files("search", "sourdough") == ["notes/recipes.md"]), "the first update"
        (notes / "zebra.md").write_text("# Zebra crossings\n\nPedestrians cross where the stripes are painted.\n")
        assert eventually(lambda: files("search", "zebra") == ["notes/zebra.md"]), "a new file"
        assert eventually(lambda: "notes/zebra.md" in files("vsearch", "where do people walk over the road",
                                                            "-n", "2")), "its vectors"
        (notes / "zebra.md").write_text("# Crossings\n\nPedestrians cross at the lights.\n")
        assert eventually(lambda: files("search", "zebra") == []), "an edit"
        (notes / "recipes.md").unlink()
        assert eventually(lambda: files("search", "sourdough") == []), "a removal"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "stopped watching" in err and "Traceback" not in err
