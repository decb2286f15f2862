"""``/v1/models``: what this installation can serve, from metadata (no model is loaded)."""

from __future__ import annotations

from fastapi import APIRouter

from pda import catalog
from pda.errors import UnknownModelError

from ..deps import OwnerDep, StateDep
from ..schemas import ModelDetail, ModelPublic

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=list[ModelPublic], name="list_models")
def list_models_route(state: StateDep, owner: OwnerDep):
    """The models this installation can serve (available = weights installed)."""
    return catalog.list_models(state.settings, state.conn, local_is_truth=state.embedded)


@router.get("/models/{name}", response_model=ModelDetail, name="get_model")
def get_model_route(name: str, state: StateDep, owner: OwnerDep):
    """One model's metadata, with its layers (names, channels, output sizes)."""
    try:
        return catalog.model_info(name, state.settings, state.conn,
                                  local_is_truth=state.embedded)
    except UnknownModelError as exc:
        raise UnknownModelError(f"{exc}; see /v1/models") from exc
