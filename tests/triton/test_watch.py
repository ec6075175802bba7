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
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.settings import Settings

from ..conftest import ASSETS


def test_watch_reindexes_and_reembeds_edits_additions_and_removals(triton: Settings, tmp_path: Path):
    notes = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    env = {"QMD_HOME": str(tmp_path / "home"), "QMD_MODEL_REPOSITORY": str(triton.model_repository),
           "QMD_HTTP_PORT": str(triton.http_port),
           "QMD_GRPC_PORT": str(triton.grpc_port), "QMD_METRICS_PORT": str(triton.metrics_port)}
    assert CliRunner().invoke(cli, ["collection", "add", str(notes), "--name", "notes"], env=env).exit_code == 0

    def files(*args: str) -> list[str]:
        result = CliRunner().invoke(cli, [*args, "--format", "json"], env=env)
        return [h["file"] for h in json.loads(result.stdout)] if result.exit_code == 0 else []

    def embedded(path: str) -> bool:
        """The file's chunks all have vectors in the test's index (the fixture's server serves another home's)."""
        with SqliteIndex.open(tmp_path / "home" / "index.sqlite", readonly=True) as store:
            doc = store.document("notes", path)
            if doc is None:
                return False
            chunks, missing = store.conn.execute(
                "SELECT COUNT(*), SUM(NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.text_hash = c.text_hash)) "
                "FROM chunks c WHERE c.hash = ?", (doc.hash,)).fetchone()
        return chunks > 0 and missing == 0

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
        assert eventually(lambda: embedded("zebra.md")), "its vectors"
        (notes / "zebra.md").write_text("# Crossings\n\nPedestrians cross at the lights.\n")
        assert eventually(lambda: files("search", "zebra") == []), "an edit"
        (notes / "recipes.md").unlink()
        assert eventually(lambda: files("search", "sourdough") == []), "a removal"
    finally:
        try:  # what the process does with signals, shown if it does not stop
            masks = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                     if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
        except OSError:
            masks = []
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        print(f"qmdctl watch said:\n{err}\nits signal masks: {masks}")  # shown when an assertion above failed
    assert "stopped watching" in err and "Traceback" not in err
