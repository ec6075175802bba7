"""The milvus backend: the index in Milvus (Milvus Lite locally and in tests, Standalone or Distributed in
production), spoken to through pymilvus.

Four Milvus collections per index, named ``PREFIX_docs``, ``PREFIX_chunks``, ``PREFIX_meta`` and
``PREFIX_keys``:

- ``docs``: one row per document *part* (a document's text in pieces of at most 60,000 bytes, cut at line
  ends; most notes are one part), each with the document's metadata, its text under a BM25 function
  (``[index] analyzer``: ``standard`` tokenizer lower-cased, or ``english`` with stemming) and its CJK runs
  under a second one (``jieba``). A document's BM25 score is its best part's. Row id = document id * 4096 +
  part; ``hkey`` (a 63-bit key of the hash) finds a content's documents where the keys map (below) cannot:
  Milvus finds integers in a list through an index where strings cost a scan; ``v`` is a 2-d zero vector
  through which rows are read by id (``_by_ids``).
- ``chunks``: one row per chunk of each distinct content, with its vector (``[index] vector_index``, HNSW by
  default; inner product over the model's normalized vectors: cosine) and ``embedded`` (false until its
  vector came). Chunks are keyed by
  content hash and sequence, vectors by the chunk text's hash: a chunk whose text is already embedded
  elsewhere gets that vector without calling the model.
- ``meta``: key/value rows (the embedding fingerprint, the last update per collection, the expansion
  cache); Milvus needs a vector field in every collection, so each row carries a 2-d zero vector.
- ``keys``: one row per 6-hex hash prefix in use, keyed by that prefix as an integer, naming each content
  hash under it with the ids of the documents that hold it. A search's hits are chunks (content hashes): their
  documents and docid neighbours come from two lookups by primary key (this map, then the documents' first
  rows; ``_by_ids``: on Milvus's C++ engine a search filtered to those keys, since there a query paid ~5 ms
  for every row it returned, the hits' documents by ``prefix in [40 values]`` 230-300 ms at 1M documents
  against 5 ms; on Milvus Lite 3 a query; perf/RESULTS.md). Writers add a
  document to the map before its rows are written and take it out after they are deleted, and readers check
  every document row against the hash they asked for, so a crash between the two leaves at worst a stale
  entry, never a document the map hides. Two writers at once (two ``update`` runs against one Milvus) can
  each read a row and write it back without the other's change: ``qmdctl cleanup`` rebuilds the map from the
  documents (the Kubernetes update CronJob forbids overlapping runs).

Milvus has no transactions across rows: ``update`` writes each document's rows then deletes what went
away, so a reader during an update may see some files changed and others not yet; a failed update is
completed by the next one (it compares the files with what Milvus holds). Writes are acknowledged only
once Milvus has them in its write-ahead log: a killed Milvus (Lite or Standalone) loses nothing acknowledged.

Example:
    >>> index = open_index(index_config(home), create=True)
    >>> index.bm25(["batching"], 5)[0][0].path
    'guide/batching.md'
"""
