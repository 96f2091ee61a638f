"""flashsdpa: memory-efficient flash attention for PyTorch, on CPU and CUDA tensors.

Ways in:
  * the flash_attn 2.x API: ``flashsdpa.flash_attn_func`` and friends (each also takes ``s_aux``);
  * the in-place varlen op and paged KV write: ``flash_attention_varlen``, ``kv_paged_write``;
  * ``import flash_attn`` through the guarded shim when no real flash-attn is installed;
  * ``flashsdpa.sdpa.install()``: route ``F.scaled_dot_product_attention`` calls it serves exactly;
  * ``flashsdpa.integrations.transformers.register()``: ``attn_implementation="flashsdpa"``.

The operators themselves are ``torch.ops.flashsdpa.*``. ``FLASHSDPA_TRACE=1`` prints a per-shape,
per-tier call summary at exit; ``FLASHSDPA_CHECK=1`` validates device-resident index tensors.
"""

from ._ops import build_info, load_library
from .flash_attn_interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
from .inplace import flash_attention_varlen, kv_paged_write

load_library()

__version__ = "0.1.0"

__all__ = [
    "build_info",
    "flash_attention_varlen",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "kv_paged_write",
]
