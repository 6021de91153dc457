"""Pydantic models of every request and response body (they make the OpenAPI schema complete)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from modalrec.serve.engine import MAX_HISTORY, MAX_K


class ErrorResponse(BaseModel):
    """Every error: HTTP status and a one-line message (422s add the offending fields)."""

    status: int = Field(description="HTTP status code.")
    message: str = Field(description="What went wrong, in one line.")
    errors: list[dict] | None = Field(default=None, description="Validation errors (422 only).")


class Health(BaseModel):
    status: str = Field(description="Always 'ok' once the run is loaded.", examples=["ok"])


class ExplanationInfo(BaseModel):
    kind: str | None = Field(
        description="attention, meta-weights, uniform, max-share, … or null when the model has none."
    )
    parts: list[str] = Field(description="Names the per-item weights refer to (modalities or representations).")


class RunMetrics(BaseModel):
    valid: dict[str, float] = Field(description="Validation metrics at the best epoch.")
    test: dict[str, float] = Field(description="Test metrics at the best epoch.")


class ColdItemsInfo(BaseModel):
    count: int = Field(description="Number of cold items (no training interaction).")
    scoring: str = Field(description="content: scored from their features; unable: ID-only model, left out.")
    rule: str = Field(description="The model's cold-item rule.")


class RetrievalInfo(BaseModel):
    method: str = Field(description="exact: every item scored; ann: candidates from the run's item index.")
    index: str | None = Field(default=None, description="The index file in the run directory (ann).")
    items: int | None = Field(default=None, description="Items the index holds (ann).")
    kind: str | None = Field(default=None, description="The index's kind: ivf or hnsw (ann).")
    ef_search: int | None = Field(default=None, description="HNSW efSearch of each query (ann, hnsw).")
    nprobe: int | None = Field(default=None, description="IVF cells each query scans (ann, ivf).")
    candidates: str | None = Field(default=None, description="How many candidates a request re-ranks (ann).")
    recall_at_10: float | None = Field(
        default=None, description="Recall@10 against exact ranking measured when the index was built (ann)."
    )
    recall_users: int | None = Field(default=None, description="Users that recall was measured on (ann).")


class Info(BaseModel):
    model: str
    dataset: str
    run: str = Field(description="Run directory being served.")
    users: int
    items: int
    train_interactions: int
    modalities: dict[str, int] = Field(description="Content modality → feature dimension.")
    has_titles: bool = Field(description="Whether the dataset has item_text.tsv titles.")
    explanation: ExplanationInfo
    fold_in: str = Field(description="Fold-in method used by POST /recommendations.")
    retrieval: RetrievalInfo = Field(description="How training users' lists are found: exact, or ann (serve --ann).")
    similar_by: list[str] = Field(description="Allowed values of ?by= for similar items.")
    best_epoch: int | None = None
    metrics: RunMetrics
    cold_items: ColdItemsInfo | None = Field(
        default=None, description="Present for a run on a cold-items split: how its cold items are scored."
    )


class Item(BaseModel):
    item: int = Field(description="Item id (0-based).")
    title: str | None = Field(description="Title from item_text.tsv, or null.")
    interactions: int = Field(description="Number of training interactions of the item.")
    cold: bool = Field(
        default=False,
        description="A held-out cold item of a cold-items split: no interaction was trained on; scored from content.",
    )


class History(BaseModel):
    user: int
    items: list[Item] = Field(description="The user's training items.")


class RecommendedItem(Item):
    rank: int
    score: float
    weights: dict[str, float] | None = Field(
        default=None, description="Per-part influence on this item's score (explain=true, models with one)."
    )
    pair_weights: dict[str, dict[str, float]] | None = Field(
        default=None, description="MeAIM stage-1 weights: user representation → item representation → weight."
    )


class Explanation(BaseModel):
    kind: str | None = Field(description="Kind of weights, or null when the model has no explanation.")
    parts: list[str]
    note: str | None = Field(default=None, description="Why there is no explanation, when kind is null.")


class Fallback(BaseModel):
    method: str = Field(description="popularity: items ranked by their number of training interactions.")
    reason: str = Field(description="Why the model's own ranking was not used.")


class Retrieval(BaseModel):
    method: str = Field(description="ann: candidates from the run's item index, re-ranked with exact scores.")
    candidates: int = Field(description="Items retrieved from the index before the exclusions.")


class Recommendations(BaseModel):
    user: int
    k: int
    exclude_seen: bool
    model: str
    items: list[RecommendedItem] = Field(description="Ranked items (fewer than k when too few are rankable).")
    explanation: Explanation | None = Field(default=None, description="Present when explain=true.")
    fallback: Fallback | None = Field(
        default=None,
        description="Present when the list is NOT the model's: the user has no training interaction, so the model "
        "never learned their representation, and the items are the most popular ones instead.",
    )
    note: str | None = Field(default=None, description="E.g. k was capped at the number of items.")
    retrieval: Retrieval | None = Field(
        default=None, description="Present when the list came from the item index (serve --ann), not full ranking."
    )


class NewUserRequest(BaseModel):
    """A user unseen in training, described by the items they interacted with."""

    model_config = ConfigDict(extra="forbid")

    items: list[int] = Field(min_length=1, max_length=MAX_HISTORY, description="Item ids the user interacted with.")
    k: int = Field(default=10, ge=1, le=MAX_K, description="List length.")
    exclude_seen: bool = Field(default=True, description="Leave the given items out of the list.")
    explain: bool = Field(default=False, description="Add per-modality influence of each item.")


class FoldInInfo(BaseModel):
    method: str = Field(
        description="mean-item-vector, mean-item-vector-attention, user-neighbours or item-representation."
    )
    neighbours: int | None = Field(default=None, description="Training users mixed (user-neighbours only).")


class NewUserRecommendations(BaseModel):
    history: list[int] = Field(description="The distinct given items.")
    k: int
    exclude_seen: bool
    model: str
    fold_in: FoldInInfo
    items: list[RecommendedItem]
    explanation: Explanation | None = None
    note: str | None = Field(default=None, description="E.g. cold items an ID-only model cannot score.")


class SimilarItem(Item):
    rank: int
    similarity: float = Field(description="Cosine similarity to the query item.")


class SimilarItems(BaseModel):
    query: Item
    by: str
    k: int
    items: list[SimilarItem]
