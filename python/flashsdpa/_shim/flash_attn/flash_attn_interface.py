"""flash_attn.flash_attn_interface served by flashsdpa."""

from flashsdpa.flash_attn_interface import *  # noqa: F401,F403
from flashsdpa.flash_attn_interface import __all__  # noqa: F401
