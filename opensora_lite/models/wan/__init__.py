"""Model family wan: Wan 2.1 / 2.2 text-to-video transformers (diffusers' WanTransformer3DModel)."""

from opensora_lite.models.wan.config import WanConfig
from opensora_lite.models.wan.spec import SPEC, WanSpec

__all__ = ["SPEC", "WanConfig", "WanSpec"]
