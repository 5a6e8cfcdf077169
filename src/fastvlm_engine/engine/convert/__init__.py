"""Apple's FastVLM releases (``llava_qwen2``) converted once into the native ``fast_vlm`` format."""

from .apple_config import is_apple_config
from .convert import (
    APPLE_LICENCE_NOTICE,
    CONVERSION_MARKER,
    CONVERTER_VERSION,
    ConversionPlan,
    ConversionResult,
    convert_apple_checkpoint,
    plan_conversion,
    write_converted,
)
from .errors import ConversionError

__all__ = ["APPLE_LICENCE_NOTICE", "CONVERSION_MARKER", "CONVERTER_VERSION", "ConversionError", "ConversionPlan",
           "ConversionResult", "convert_apple_checkpoint", "is_apple_config", "plan_conversion", "write_converted"]
