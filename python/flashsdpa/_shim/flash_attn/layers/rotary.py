"""flash_attn.layers.rotary served by flashsdpa."""

from flashsdpa.layers.rotary import *  # noqa: F401,F403
from flashsdpa.layers.rotary import __all__  # noqa: F401
