"""flash_attn.layers served by flashsdpa."""
