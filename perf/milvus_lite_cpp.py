"""Serve one database of the C++ Milvus Lite (the ``milvus-lite`` 2.5 wheel: Milvus 2.5's own engine, knowhere
and segcore, as one local process) on a TCP port, for ``perf/milvus_scale.py --uri`` and for the test suite
(``QMD_TEST_MILVUS_URI``).

The project's own local Milvus Lite is the 3.x wheel (a Python engine: what ``qmdctl up`` runs and the default
suite uses). The 2.5 wheel installs a package of the same name, so it lives in a virtual environment of its own:

    python3 -m venv /tmp/milvus-cpp && /tmp/milvus-cpp/bin/pip install "milvus-lite==2.5.1" "setuptools<81"
    /tmp/milvus-cpp/bin/python perf/milvus_lite_cpp.py /tmp/milvus-cpp/scale.db --port 19631 &
    QMD_HOME=... .venv/bin/python perf/milvus_scale.py --uri http://127.0.0.1:19631 --vector-index AUTOINDEX ...

What that engine takes (checked 2026-11-30, perf/RESULTS.md "The index on Milvus"): vector indexes FLAT, IVF_FLAT
and AUTOINDEX only (no HNSW; AUTOINDEX and IVF_FLAT fall back to a built-in interim index whose settings cannot be
changed); no unary ``not`` in filters and no ``text_match``, which qmd's minus-words, quoted phrases and
re-chunking use. Stops on SIGTERM or SIGINT; prints the server's pid.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", help="the database file (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19631)
    args = parser.parse_args()
    from milvus_lite.server import Server

    server = Server(args.db, f"{args.host}:{args.port}")
    if not server.init() or not server.start():
        sys.exit(f"Error: Milvus Lite could not start on {args.host}:{args.port} with {args.db}")
    process = getattr(server, "_p", None)
    print(f"Milvus Lite (C++) serving {args.db} on {args.host}:{args.port}, server pid "
          f"{getattr(process, 'pid', '?')}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
