"""Request bodies of the gateway, as pydantic models (they are also its OpenAPI schema).

The QMD-Python shapes (``{"query", "top_k"}``, ``{"texts": [...]}``, ``/rerank``'s ``{"query", "documents",
"top_k"}``) are the primary ones; the aliases other QMD clients send (``limit``, ``n``, ``minScore``,
``collection``) are accepted too, and two names of one option given together must agree. TEI's forms
(``/embed`` ``{"inputs", "normalize", "truncate", ...}``, ``/rerank`` ``{"query", "texts", ...}``) and OpenAI's
``/v1/embeddings`` take their own fields. Every other key is refused (400): no door accepts an argument it
would then ignore.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from qmd_triton.contracts import KIND_DOCUMENT
from qmd_triton.search.options import CANDIDATES, MAX_RESULTS, MAX_SEARCHES, SearchOptions


class Strict(BaseModel):
    """Unknown keys refused; the names of one option (``top_k``, ``limit``, ``n``) given together must agree."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _aliases_agree(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if not isinstance(alias, AliasChoices):
                continue
            given = [str(a) for a in alias.choices if str(a) in data]
            values = [data[a] for a in given]
            if len(given) > 1 and any(v != values[0] for v in values[1:]):
                shown = " and ".join(f"{a}={data[a]!r}" for a in given)
                raise ValueError(f"{shown} name one option ({name}) with two values; give one of them")
        return data


class SearchRequest(Strict):
    """``/search`` (BM25) and ``/vsearch`` (vectors)."""

    query: str = Field(description="What to look for (at most 16 KiB).")
    top_k: int = Field(10, ge=1, le=MAX_RESULTS, validation_alias=AliasChoices("top_k", "limit", "n"),
                       description="Results to return (also accepted as `limit` or `n`).")
    min_score: float = Field(0.0, ge=0.0, le=1.0, validation_alias=AliasChoices("min_score", "minScore"),
                             description="Drop results scoring below this (0-1).")
    collections: list[str] = Field(default_factory=list, validation_alias=AliasChoices("collections", "collection"),
                                   description="Search only these collections (`collection`: one name).")
    full: bool | None = Field(None, description="Add each document's whole `body` to its hit. [default: true on "
                                                "/vsearch, as QMD-Python answers; false elsewhere]")

    @field_validator("collections", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def options(self, full_by_default: bool = False, **extra: Any) -> SearchOptions:
        return SearchOptions(n=self.top_k, collections=tuple(self.collections), min_score=self.min_score,
                             full=full_by_default if self.full is None else self.full, **extra)


class SubSearch(Strict):
    type: Literal["lex", "vec", "hyde"] = Field(description="lex: BM25 keywords; vec: a question for vector "
                                                            "search; hyde: a hypothetical answer, embedded.")
    query: str


class QueryRequest(SearchRequest):
    """``/query``: the hybrid pipeline (expansion, BM25 + vectors, RRF, reranking)."""

    query: str = Field("", description="What to look for; lines starting with lex:, vec: or hyde: are typed "
                                       "sub-queries. May be empty when `searches` is given.")
    searches: list[SubSearch] = Field(default_factory=list, max_length=MAX_SEARCHES,
                                      description="Typed sub-queries; they replace the LLM's expansion.")
    intent: str = Field("", description="What the query means, to tell apart words with several senses.")
    expand: bool | None = Field(None, description="Run LLM query expansion (ignored when `searches` is given). "
                                                   "[default: the server's; off on the CPU]")
    rerank: bool = Field(True, description="Run the cross-encoder.")
    candidates: int = Field(CANDIDATES, ge=1, le=200, validation_alias=AliasChoices("candidates", "candidate_limit",
                                                                               "candidateLimit"),
                            description="Candidates to rerank.")
    explain: bool = Field(False, description="Add each hit's lists, ranks, RRF and rerank scores.")

    @model_validator(mode="after")
    def _something_to_search(self) -> QueryRequest:
        if not self.query.strip() and not self.searches:
            raise ValueError("give a query or typed searches")
        return self

    def options(self, full_by_default: bool = False, **extra: Any) -> SearchOptions:
        return super().options(full_by_default, expand=self.expand, rerank=self.rerank, candidates=self.candidates,
                               explain=self.explain, intent=self.intent,
                               searches=tuple((s.type, s.query) for s in self.searches), **extra)


class EmbedRequest(Strict):
    """``/embed``: QMD-Python's ``{"texts": [...]}``, or TEI's ``{"inputs": "..." | [...]}`` with its options."""

    texts: list[str] | None = Field(None, description="Texts to embed (QMD-Python): any number, split into "
                                                      "Triton-sized requests.")
    inputs: str | list[str] | None = Field(None, description="TEI's form: the answer is a bare list of vectors.")
    kind: Literal["document", "query"] = Field(KIND_DOCUMENT, description="Prompt format: document (qmd_embed) "
                                                                         "or query.")
    normalize: bool = Field(True, description="TEI: unit-length vectors; false returns the pooled vectors "
                                              "before their L2 normalization.")
    truncate: bool | None = Field(None, description="TEI: cut texts longer than the model's window (true, the "
                                                    "default here); false refuses them with 413.")
    truncation_direction: Literal["right", "Right"] = Field("right", description="TEI: only right is served "
                                                                                 "(the end of a text is cut).")
    prompt_name: None = Field(None, description="TEI: not served (the model's prompt formats apply).")
    dimensions: int | None = Field(None, description="TEI: must equal the model's dimension when given.")

    @model_validator(mode="after")
    def _one_form(self) -> EmbedRequest:
        if (self.texts is None) == (self.inputs is None):
            raise ValueError("send either texts (a list of strings) or inputs")
        return self

    @property
    def tei(self) -> bool:
        return self.inputs is not None

    @property
    def items(self) -> list[str]:
        if self.texts is not None:
            return self.texts
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs or [])


RERANK_TEXT_KEYS = ("content", "body", "text", "snippet", "title")


class RerankRequest(Strict):
    """``/rerank``: TEI's ``{"query", "texts"}`` (a score per text, best first) or QMD-Python's ``{"query",
    "documents", "top_k"}`` (the documents back with their ``rerank_score``, best first)."""

    query: str
    texts: list[str] | None = Field(None, description="TEI: texts to score against the query, any number.")
    raw_scores: bool = Field(False, description="TEI: return the raw logits instead of sigmoid probabilities.")
    return_text: bool = Field(False, description="TEI: echo each text beside its score.")
    truncate: bool | None = Field(None, description="TEI: cut pairs longer than the cross-encoder's window (true, "
                                                    "the default here); false refuses them with 413.")
    truncation_direction: Literal["right", "Right"] = Field("right", description="TEI: only right is served.")
    documents: list[dict[str, Any]] | None = Field(None, description=(
        "QMD-Python: documents (objects) to rank; each is scored on its first text field of "
        f"{', '.join(RERANK_TEXT_KEYS)} and comes back whole with `rerank_score`."))
    top_k: int | None = Field(None, ge=1, description="QMD-Python: documents to return (default 5).")

    @model_validator(mode="after")
    def _one_form(self) -> RerankRequest:
        if (self.texts is None) == (self.documents is None):
            raise ValueError("send either texts (TEI: a list of strings) or documents (QMD-Python: objects)")
        if self.documents is not None and (self.raw_scores or self.return_text or self.truncate is not None):
            raise ValueError("raw_scores, return_text and truncate go with texts (TEI's form), not documents")
        if self.texts is not None and self.top_k is not None:
            raise ValueError("top_k goes with documents (QMD-Python's form); TEI's form scores every text")
        return self

    @property
    def tei(self) -> bool:
        return self.texts is not None

    def passages(self) -> list[str]:
        """The text scored for each item (TEI: the texts; QMD-Python: each document's first text field)."""
        if self.texts is not None:
            return self.texts
        out = []
        for i, doc in enumerate(self.documents or []):
            text = next((doc[k] for k in RERANK_TEXT_KEYS if isinstance(doc.get(k), str) and doc[k].strip()), None)
            if text is None:
                raise ValueError(f"documents[{i}] has no text to score: give it one of {', '.join(RERANK_TEXT_KEYS)}")
            out.append(text)
        return out


class OpenAIEmbeddingRequest(Strict):
    """OpenAI's ``/v1/embeddings``."""

    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not accepted).")
    model: str | None = Field(None, description="The served embedding model's id (GET /v1/models); another is "
                                                "refused.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Must equal the model's dimension when given.")

    @property
    def items(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class GetRequest(Strict):
    """``/get``: one document."""

    file: str = Field(validation_alias=AliasChoices("file", "ref", "path"),
                      description="collection/path, a path, or #docid; may end in :FROM[:COUNT].")
    from_line: int | None = Field(None, ge=1, validation_alias=AliasChoices("from_line", "fromLine"))
    max_lines: int | None = Field(None, ge=1, validation_alias=AliasChoices("max_lines", "maxLines"))


class MultiGetRequest(Strict):
    """``/multi_get``: several documents by glob or comma-separated references."""

    pattern: str
    max_bytes: int = Field(65536, ge=1, validation_alias=AliasChoices("max_bytes", "maxBytes"))
    max_lines: int | None = Field(None, ge=1, validation_alias=AliasChoices("max_lines", "maxLines"))

