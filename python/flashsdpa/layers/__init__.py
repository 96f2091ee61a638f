"""Layers with the flash_attn.layers API."""
