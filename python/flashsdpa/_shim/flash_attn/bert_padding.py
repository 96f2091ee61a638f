"""flash_attn.bert_padding served by flashsdpa."""

from flashsdpa.bert_padding import *  # noqa: F401,F403
from flashsdpa.bert_padding import __all__  # noqa: F401
