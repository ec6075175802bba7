"""Evaluation sets and benchmark texts: BEIR sets and known-item sets of real notes.

Two layouts are read:

* BEIR (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``): short passages with graded
  judgements (msmarco, dbpedia). The corpus is written out as markdown files (``# title``
  then the text) in a workspace of its own and indexed like any collection.
* known-item (``corpus/`` of markdown files, ``queries.tsv`` with ``query<TAB>expected_file``):
  real notes with one expected file per query (triton-docs). The corpus folder is indexed
  as it is, so chunking, titles and line numbers meet real markdown.

The sets are found under ``QMD_DATASETS`` (default ``../shared/datasets``).

Example:
    >>> s = load_set(default_datasets() / "triton-docs")
    >>> s.kind, len(s.judged_queries())
    ('known-item', 40)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qmd_triton.errors import InputError
from qmd_triton.progress import Progress, silent

BEIR = "beir"
KNOWN_ITEM = "known-item"
PASSAGE_SETS = ("msmarco", "dbpedia")


@dataclass
class EvalSet:
    """Queries with their relevant documents; the documents either inline (BEIR) or a folder (known-item)."""

    name: str
    kind: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}; a known-item doc id is its path
    corpus: dict[str, tuple[str, str]] = field(default_factory=dict)  # BEIR: id -> (title, text)
    corpus_dir: Path | None = None  # known-item: the markdown folder to index

    def judged_queries(self) -> list[str]:
        """Queries with at least one relevant (grade > 0) document, in file order."""
        return [q for q in self.queries if any(g > 0 for g in self.qrels.get(q, {}).values())]

    @property
    def documents(self) -> int:
        return len(self.texts())

    def sample(self, queries: int | None = None, documents: int | None = None) -> EvalSet:
        """A smaller set for a quick guard: the first ``queries`` judged queries, and (BEIR) every document
        judged for them plus the corpus's others in file order, up to ``documents`` in all (a judged document
        is never dropped). Its name says what was kept, so its workspace is its own."""
        if queries is None and documents is None:
            return self
        if documents is not None and self.kind != BEIR:
            raise InputError("--documents samples a BEIR set's corpus; a known-item set indexes its whole folder")
        kept = self.judged_queries()[:queries] if queries is not None else self.judged_queries()
        qrels = {q: self.qrels[q] for q in kept}
        corpus = self.corpus
        if documents is not None:
            judged = {d for q in kept for d in qrels[q] if d in self.corpus}
            others = [d for d in self.corpus if d not in judged][: max(0, documents - len(judged))]
            chosen = judged | set(others)
            corpus = {d: v for d, v in self.corpus.items() if d in chosen}
        tag = (f"-q{len(kept)}" if queries is not None else "") + (f"-d{len(corpus)}" if documents is not None else "")
        return EvalSet(self.name + tag, self.kind, {q: self.queries[q] for q in kept}, qrels, corpus=corpus,
                       corpus_dir=self.corpus_dir)

    def texts(self) -> dict[str, tuple[str, str]]:
        """Every document as ``id -> (title, text)``; a known-item set's files are read (once)."""
        if self.corpus_dir is not None and not self.corpus:
            from qmd_triton.text.markdown import read_document, title_of

            for path in sorted(self.corpus_dir.rglob("*.md")):
                rel = path.relative_to(self.corpus_dir).as_posix()
                text = read_document(path)
                self.corpus[rel] = (title_of(text, path.stem), text)
        return self.corpus


def read_jsonl(path: Path, limit: int | None = None) -> Iterator[dict]:
    """Rows of a JSON-lines file, streamed; a bad row names its line."""
    n = 0
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as e:
                raise InputError(f"{path}:{lineno}: not JSON ({e})") from None
            n += 1
            if limit is not None and n >= limit:
                return


def missing_datasets_message(root: Path, names: tuple[str, ...] = PASSAGE_SETS) -> str:
    return (f"the evaluation sets {', '.join(names)} are not under {root}: put the shared datasets there "
            "or point QMD_DATASETS at the folder that holds them")


def load_set(directory: Path, split: str = "test") -> EvalSet:
    """A BEIR set or a known-item set, by what the folder holds."""
    directory = Path(directory)
    if (directory / "queries.tsv").is_file() and (directory / "corpus").is_dir():
        return load_known_item(directory)
    return load_beir(directory, split)


def load_known_item(directory: Path) -> EvalSet:
    corpus = directory / "corpus"
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    lines = (directory / "queries.tsv").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        parts = line.split("\t")
        if n == 1 and parts[:2] == ["query", "expected_file"] or not line.strip():
            continue
        if len(parts) != 2 or not parts[0].strip():
            raise InputError(f"{directory / 'queries.tsv'}:{n}: want `query<TAB>expected_file`")
        if not (corpus / parts[1]).is_file():
            raise InputError(f"{directory / 'queries.tsv'}:{n}: {parts[1]} is not in {corpus}")
        qid = f"q{len(queries) + 1:02d}"
        queries[qid] = parts[0].strip()
        qrels[qid] = {parts[1].strip(): 1}
    if not queries:
        raise InputError(f"{directory / 'queries.tsv'} holds no query")
    return EvalSet(directory.name, KNOWN_ITEM, queries, qrels, corpus_dir=corpus)


def load_beir(directory: Path, split: str = "test") -> EvalSet:
    directory = Path(directory)
    files = {"corpus": directory / "corpus.jsonl", "queries": directory / "queries.jsonl",
             "qrels": directory / "qrels" / f"{split}.tsv"}
    for path in files.values():
        if not path.is_file():
            raise InputError(f"{directory} is not an evaluation set: {path.relative_to(directory)} is missing "
                             "(a BEIR set has corpus.jsonl, queries.jsonl and qrels/; a known-item set has "
                             "corpus/ and queries.tsv)")
    corpus: dict[str, tuple[str, str]] = {}
    for row in read_jsonl(files["corpus"]):
        try:
            corpus[str(row["_id"])] = (row.get("title") or "", row.get("text") or "")
        except KeyError as e:
            raise InputError(f"{files['corpus']}: a row has no {e}") from None
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(files["queries"])}
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(files["qrels"].read_text(encoding="utf-8").split("\n"), 1):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or (n == 1 and not parts[2].strip().lstrip("-").isdigit()):
            continue  # header row or blank
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    name = directory.name if directory.name != "beir" else directory.parent.name
    return EvalSet(name, BEIR, queries, qrels, corpus=corpus)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(doc_id: str) -> str:
    """A file name for a corpus id that is safe and unique (a hash suffix keeps ids apart)."""
    stem = _UNSAFE.sub("_", doc_id).strip("._")[:60] or "doc"
    return f"{stem}-{hashlib.sha1(doc_id.encode()).hexdigest()[:8]}.md"


def as_markdown(title: str, text: str) -> str:
    return f"# {title}\n\n{text}\n" if title else f"{text}\n"


def write_collection(beir: EvalSet, target: Path, progress: Progress = silent) -> dict[str, str]:
    """Writes the corpus as markdown files (only those missing or different); returns path -> id."""
    target.mkdir(parents=True, exist_ok=True)
    mapping = {}
    written = 0
    for doc_id, (title, text) in beir.corpus.items():
        name = file_name(doc_id)
        mapping[name] = doc_id
        path = target / name
        body = as_markdown(title, text)
        if not path.exists() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")
            written += 1
    if written:
        progress(f"wrote {written} markdown files to {target}")
    return mapping


def passage_text(title: str, text: str) -> str:
    """A BEIR passage as one text: ``title. text`` (what the baselines embed and rerank)."""
    return f"{title}. {text}" if title else text


def passages(datasets: Path, count: int) -> list[str]:
    """The first ``count`` passages (title. text) of msmarco, then dbpedia."""
    texts: list[str] = []
    for name in PASSAGE_SETS:
        if len(texts) < count:
            texts += [passage_text(r.get("title") or "", r["text"])
                      for r in read_jsonl(datasets / name / "corpus.jsonl", count - len(texts))]
    return texts


def queries(datasets: Path, count: int) -> list[str]:
    """Up to ``count`` queries of msmarco, then dbpedia."""
    return [r["text"] for name in PASSAGE_SETS for r in read_jsonl(datasets / name / "queries.jsonl", count)][:count]


def require_passage_sets(datasets: Path) -> None:
    missing = [n for n in PASSAGE_SETS
               if not (datasets / n / "corpus.jsonl").is_file() or not (datasets / n / "queries.jsonl").is_file()]
    if missing:
        raise InputError(missing_datasets_message(datasets, tuple(missing)))
