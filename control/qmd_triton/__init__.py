"""qmd-triton: QMD search (BM25, vectors, query expansion, reranking) served by Triton.

The package is the core library shared by the ``qmdctl`` CLI and the Python models
that run inside Triton. The core never prints or exits: it reports progress through
callbacks and raises :class:`qmd_triton.errors.QmdError` subclasses.
"""

__version__ = "0.1.0"
