"""flash_attn served by flashsdpa (no real flash-attn is installed; see flashsdpa_shim_guard)."""

from flashsdpa.flash_attn_interface import (  # noqa: F401
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)

# The flash-attn release whose Python API this package mirrors, marked as not being flash-attn.
__version__ = "2.8.3+flashsdpa"
__flashsdpa_shim__ = True
