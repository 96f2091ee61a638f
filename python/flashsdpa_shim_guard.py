"""The guarded flash_attn import shim, installed at interpreter start by flashsdpa_shim.pth.

It appends one finder to the end of sys.meta_path. Python asks it only after every regular finder
has failed to find ``flash_attn``, so a real flash-attn installation always wins; only when there
is none is ``import flash_attn`` (and its submodules flash_attn_interface, bert_padding,
layers.rotary) served by flashsdpa's compatibility package. FLASHSDPA_SHIM=off (or 0/false/no)
turns it off, at start-up or before the first import.

This runs in every interpreter start, so it imports nothing heavy: torch and flashsdpa are loaded
only when flash_attn is actually imported.
"""

import importlib.machinery
import importlib.util
import os
import sys

_DISABLED = ("off", "0", "false", "no", "disable", "disabled")


def enabled():
    return os.environ.get("FLASHSDPA_SHIM", "auto").strip().lower() not in _DISABLED


class FlashAttnShimFinder:
    """A sys.meta_path finder that serves the top-level flash_attn package from flashsdpa."""

    def find_spec(self, fullname, path=None, target=None):
        # Submodules are found through the shim package's own __path__ by the regular finders.
        if fullname != "flash_attn" or not enabled():
            return None
        flashsdpa = importlib.util.find_spec("flashsdpa")
        if flashsdpa is None or not flashsdpa.submodule_search_locations:
            return None
        shim_roots = [os.path.join(location, "_shim") for location in flashsdpa.submodule_search_locations]
        return importlib.machinery.PathFinder.find_spec("flash_attn", shim_roots)

    def invalidate_caches(self):
        pass


def install():
    """Appends the finder once; returns whether the shim is active."""
    if not enabled():
        return False
    if not any(isinstance(finder, FlashAttnShimFinder) for finder in sys.meta_path):
        sys.meta_path.append(FlashAttnShimFinder())
    return True


def uninstall():
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, FlashAttnShimFinder)]


install()
