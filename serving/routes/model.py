"""The live model: ``GET /v1/model`` (version, variant, its card and plots, swap counters, the shadow)."""

from __future__ import annotations

from fastapi import APIRouter

from aidetect.links import model_plot_path
from serving.deps import LiveModelDep, StateDep
from serving.errors import PROBLEM
from serving.hotswap import LiveModel
from serving.schemas import ModelOut, ShadowOut

router = APIRouter(prefix="/v1/model", tags=["model"])


def _model_out(holder_alias: str, live: LiveModel, swaps: int, refused: int, last_error: str | None) -> ModelOut:
    return ModelOut(
        version=live.version,
        variant=live.variant,
        alias=holder_alias,
        loaded_at=live.loaded_at,
        swaps=swaps,
        refused=refused,
        last_error=last_error,
        metadata=live.card.model_dump(mode="json"),
        plots={name: model_plot_path(live.version, name) for name in live.card.plot_names},
    )


@router.get("", response_model=ModelOut, responses={503: PROBLEM})
async def model_info(state: StateDep, live: LiveModelDep) -> ModelOut:
    """The live model: version, variant, its card (metrics, calibration, lineage, gate verdict), the URLs
    of its plots, swap counters."""
    holder = state.holder
    out = _model_out(holder.alias, live, holder.swaps, holder.refused, holder.last_error)
    shadow = state.shadow.current if state.shadow is not None else None
    if shadow is not None and state.shadow is not None:
        out.shadow = ShadowOut(alias=state.shadow.alias, version=shadow.version, share=state.settings.shadow_share)
    return out
