"""Request bodies of the gateway, as pydantic models (they are also its OpenAPI schema).

The QMD-Python shapes (``{"query", "top_k"}``, ``{"texts": [...]}``) are the primary ones; the aliases other
QMD clients send (``limit``, ``n``, ``minScore``, ``collection``) are accepted too. Unknown keys are refused
(400), except on ``/v1/embeddings`` and TEI's ``/rerank`` and ``/embed`` forms, whose clients send fields this
server has no use for (``user``, ``truncate``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from qmd_triton.contracts import KIND_DOCUMENT
from qmd_triton.search.options import CANDIDATES, MAX_RESULTS, MAX_SEARCHES, SearchOptions


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SearchRequest(Strict):
    """``/search`` (BM25) and ``/vsearch`` (vectors)."""

    query: str = Field(description="What to look for (at most 16 KiB).")
    top_k: int = Field(10, ge=1, le=MAX_RESULTS, validation_alias=AliasChoices("top_k", "limit", "n"),
                       description="Results to return (also accepted as `limit` or `n`).")
    min_score: float = Field(0.0, ge=0.0, le=1.0, validation_alias=AliasChoices("min_score", "minScore"),
                             description="Drop results scoring below this (0-1).")
    collections: list[str] = Field(default_factory=list, validation_alias=AliasChoices("collections", "collection"),
                                   description="Search only these collections (`collection`: one name).")
    full: bool = Field(False, description="Add each document's whole `body` to its hit.")

    @field_validator("collections", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def options(self, **extra: Any) -> SearchOptions:
        return SearchOptions(n=self.top_k, collections=tuple(self.collections), min_score=self.min_score,
                             full=self.full, **extra)


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

    def options(self, **extra: Any) -> SearchOptions:
        return super().options(expand=self.expand, rerank=self.rerank, candidates=self.candidates,
                               explain=self.explain, intent=self.intent,
                               searches=tuple((s.type, s.query) for s in self.searches), **extra)


class EmbedRequest(BaseModel):
    """``/embed``: QMD-Python's ``{"texts": [...]}``, or TEI's ``{"inputs": "..." | [...]}``."""

    model_config = ConfigDict(extra="ignore")
    texts: list[str] | None = Field(None, description="Texts to embed (QMD-Python): any number, split into "
                                                      "Triton-sized requests.")
    inputs: str | list[str] | None = Field(None, description="TEI's form: the answer is a bare list of vectors.")
    kind: Literal["document", "query"] = Field(KIND_DOCUMENT, description="Prompt format: document (qmd_embed) "
                                                                         "or query.")

    @model_validator(mode="after")
    def _one_form(self) -> EmbedRequest:
        if (self.texts is None) == (self.inputs is None):
            raise ValueError("send either texts (a list of strings) or inputs")
        return self

    @property
    def items(self) -> list[str]:
        if self.texts is not None:
            return self.texts
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs or [])


class RerankRequest(BaseModel):
    """TEI's ``/rerank``: a query and texts -> a score per text."""

    model_config = ConfigDict(extra="ignore")
    query: str
    texts: list[str] = Field(description="Texts to score against the query, any number.")
    raw_scores: bool = Field(False, description="Return the raw logits instead of sigmoid probabilities.")
    return_text: bool = Field(False, description="Echo each text beside its score.")


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's ``/v1/embeddings``."""

    model_config = ConfigDict(extra="ignore")
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not accepted).")
    model: str | None = Field(None, description="Ignored: the server embeds with the model it serves.")
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
    max_bytes: int = Field(10240, ge=1, validation_alias=AliasChoices("max_bytes", "maxBytes"))
    max_lines: int | None = Field(None, ge=1, validation_alias=AliasChoices("max_lines", "maxLines"))

