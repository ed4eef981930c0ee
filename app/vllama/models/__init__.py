"""The model store on disk (Hugging Face cache + the demo model) and model file facts."""

from vllama.models.store import (
    ApiModelStore,
    HubAccessDenied,
    HubModelNotFound,
    HubUnreachable,
    ModelInUse,
    ModelNotInStore,
    ModelStore,
    StoredModel,
    StoreError,
)

__all__ = [
    "ApiModelStore",
    "HubAccessDenied",
    "HubModelNotFound",
    "HubUnreachable",
    "ModelInUse",
    "ModelNotInStore",
    "ModelStore",
    "StoreError",
    "StoredModel",
]
