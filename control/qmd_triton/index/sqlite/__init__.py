"""The sqlite backend: the whole index in one SQLite file (WAL mode), for one machine."""
