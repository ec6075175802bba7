"""The index's schema, its version, and the migrations that bring an older index up to date.

An index records its schema version in ``meta``. Opening an older index for writing
applies each migration in turn, each in one transaction (a failure leaves the index as
it was); an index from a newer qmdctl is refused with one line. Version 1 is the
first released schema: :data:`SCHEMA_V1` is kept verbatim so the migrations can be
tested against a real version-1 file.

History:
    1  documents, content by hash, chunks, vectors by chunk id, FTS5 (CJK bigrams)
    2  chunks carry the hash of their text; vectors live in ``embeddings`` keyed by that hash,
       so a chunk whose text is unchanged (an edit elsewhere in its document, a renamed or
       copied file) keeps its vector instead of being embedded again
    3  ``expansions``: the LLM's query expansions, kept across server restarts
    4  ``vector_log``: which chunks' vectors came, went or changed (filled by triggers), so a server holding
       the vectors in memory reads only those after an update

Example:
    >>> migrate(conn, progress=print)
    migrating the index from schema 1 to 2 (embeddings keyed by chunk text)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from qmd_triton.errors import IndexCorrupt
from qmd_triton.index.rows import text_hash
from qmd_triton.progress import Progress, silent

SCHEMA_VERSION = 4

_COMMON = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE content (hash TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE documents (
  id INTEGER PRIMARY KEY,
  collection TEXT NOT NULL,
  path TEXT NOT NULL,
  title TEXT NOT NULL,
  hash TEXT NOT NULL REFERENCES content(hash),
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  indexed_at REAL NOT NULL,
  UNIQUE (collection, path)
);
CREATE INDEX documents_hash ON documents(hash);
CREATE TABLE chunked (hash TEXT PRIMARY KEY REFERENCES content(hash) ON DELETE CASCADE);
CREATE VIRTUAL TABLE fts USING fts5(title, body, tokenize = 'porter unicode61 remove_diacritics 2');
"""

_EXPANSIONS = """
CREATE TABLE expansions (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX expansions_created ON expansions(created);
"""


# Which chunks' vectors may have changed, for servers that hold the vectors in memory (search/vectors.py):
# a reader remembers the last seq it applied and reads only what came after, instead of every chunk id.
# Triggers fill it, so every writer (this version's or a later one's) keeps it true; writers prune it.
_VECTOR_LOG = """
CREATE TABLE vector_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, chunk_id INTEGER NOT NULL);
CREATE TRIGGER vector_log_chunk_added AFTER INSERT ON chunks
  BEGIN INSERT INTO vector_log (chunk_id) VALUES (NEW.id); END;
CREATE TRIGGER vector_log_chunk_removed AFTER DELETE ON chunks
  BEGIN INSERT INTO vector_log (chunk_id) VALUES (OLD.id); END;
CREATE TRIGGER vector_log_vector_added AFTER INSERT ON embeddings
  BEGIN INSERT INTO vector_log (chunk_id) SELECT id FROM chunks WHERE text_hash = NEW.text_hash; END;
CREATE TRIGGER vector_log_vector_removed AFTER DELETE ON embeddings
  BEGIN INSERT INTO vector_log (chunk_id) SELECT id FROM chunks WHERE text_hash = OLD.text_hash; END;
"""


_CHUNK_COLUMNS = """
  id INTEGER PRIMARY KEY,
  hash TEXT NOT NULL REFERENCES content(hash) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  start_line INTEGER NOT NULL,
  end_line INTEGER NOT NULL,
  tokens INTEGER NOT NULL,
  text TEXT NOT NULL,"""

SCHEMA_V1 = _COMMON + f"""
CREATE TABLE chunks ({_CHUNK_COLUMNS}
  UNIQUE (hash, seq)
);
CREATE TABLE vectors (
  chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
  vec BLOB NOT NULL
);
"""

SCHEMA = _COMMON + f"""
CREATE TABLE chunks ({_CHUNK_COLUMNS}
  text_hash TEXT NOT NULL,
  UNIQUE (hash, seq)
);
CREATE INDEX chunks_text_hash ON chunks(text_hash);
CREATE TABLE embeddings (text_hash TEXT PRIMARY KEY, vec BLOB NOT NULL);
""" + _EXPANSIONS + _VECTOR_LOG



def _v1_to_v2(conn: sqlite3.Connection) -> None:
    conn.create_function("qmd_text_hash", 1, text_hash, deterministic=True)
    conn.execute("ALTER TABLE chunks ADD COLUMN text_hash TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE chunks SET text_hash = qmd_text_hash(text)")
    conn.execute("CREATE INDEX chunks_text_hash ON chunks(text_hash)")
    conn.execute("CREATE TABLE embeddings (text_hash TEXT PRIMARY KEY, vec BLOB NOT NULL)")
    conn.execute("INSERT OR IGNORE INTO embeddings (text_hash, vec) "
                 "SELECT c.text_hash, v.vec FROM vectors v JOIN chunks c ON c.id = v.chunk_id")
    conn.execute("DROP TABLE vectors")


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    _script(conn, _EXPANSIONS)


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    _script(conn, _VECTOR_LOG)


def _script(conn: sqlite3.Connection, sql: str) -> None:
    """Runs the statements of ``sql`` (triggers hold ``;`` inside BEGIN ... END) inside the caller's transaction."""
    statement = ""
    for line in sql.strip().splitlines():
        statement += line + "\n"
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""


# version reached -> (what it does, the step from the version before)
MIGRATIONS: dict[int, tuple[str, Callable[[sqlite3.Connection], None]]] = {
    2: ("embeddings keyed by chunk text", _v1_to_v2),
    3: ("an expansion cache", _v2_to_v3),
    4: ("a log of changed vectors (servers follow an update by reading only what changed)", _v3_to_v4),
}


def create(conn: sqlite3.Connection) -> None:
    """Writes the current schema into an empty file, in one transaction."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(
        "BEGIN IMMEDIATE;\n" + SCHEMA
        + f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');\n"
        + f"INSERT INTO meta VALUES ('created_at', '{time.time()}');\nCOMMIT;"
    )


def version(conn: sqlite3.Connection, where: str) -> int:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:
        raise IndexCorrupt(f"{where} is a SQLite file but not a qmd-triton index") from None
    try:
        return int(row[0]) if row else 0
    except ValueError:
        raise IndexCorrupt(f"{where} has an unreadable schema version {row[0]!r}") from None


def check_supported(found: int, where: str) -> None:
    if found > SCHEMA_VERSION:
        raise IndexCorrupt(f"{where} was written by a newer qmdctl (index schema {found}); this one reads "
                           f"schema {SCHEMA_VERSION} and older: upgrade qmd-triton")
    if found < 1:
        raise IndexCorrupt(f"{where} has no schema version; it is not a qmd-triton index")


def migrate(conn: sqlite3.Connection, where: str = "the index", progress: Progress = silent) -> int:
    """Brings the index to :data:`SCHEMA_VERSION`; returns how many migrations ran."""
    found = version(conn, where)
    check_supported(found, where)
    ran = 0
    for target in range(found + 1, SCHEMA_VERSION + 1):
        what, step = MIGRATIONS[target]
        progress(f"migrating {where} from index schema {target - 1} to {target} ({what})")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version(conn, where) != target - 1:  # another process migrated it meanwhile
                conn.execute("ROLLBACK")
                continue
            step(conn)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        ran += 1
    return ran
