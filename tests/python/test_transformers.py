"""attn_implementation="flashsdpa" in transformers.

The attention function itself is tested on every machine against the reference (it needs no
transformers). Tiny randomly initialised models (Llama-style GQA, Gemma-2-style sliding window +
softcap, gpt-oss-style sinks + sliding window) against attn_implementation="eager" need
transformers, which Debian 12 does not package: they run where it is installed (the GPU machine).
"""

import inspect

import pytest
import torch

import flashsdpa
from flashsdpa.integrations.transformers import flashsdpa_attention_forward
from helpers import check_attention, cu_seqlens, randn


class _Module:
    """What the attention function reads from the attention module."""

    def __init__(self, is_causal=True):
        self.is_causal = is_causal
        self.training = False


def _heads_first(t):
    return t.transpose(1, 2)  # [B, S, H, D] -> the [B, H, S, D] transformers passes


@pytest.mark.parametrize("features", [
    {},
    {"sliding_window": 5},
    {"softcap": 3.0, "sliding_window": 4},
    {"s_aux": True},
], ids=["causal", "sliding", "softcap-sliding", "sinks"])
def test_attention_function_without_mask(features, device):
    features = dict(features)
    q = randn(2, 11, 8, 16, dtype=torch.bfloat16, device=device)
    k = randn(2, 11, 2, 16, dtype=torch.bfloat16, device=device)
    v = randn(2, 11, 2, 16, dtype=torch.bfloat16, device=device)
    reference = {"causal": True, "softmax_scale": 0.3}
    if features.pop("s_aux", False):
        features["s_aux"] = torch.randn(8, device=device)
        reference["sinks"] = features["s_aux"]
    if "sliding_window" in features:
        reference["window_size"] = (features["sliding_window"] - 1, features["sliding_window"] - 1)
    if "softcap" in features:
        reference["softcap"] = features["softcap"]
    out, weights = flashsdpa_attention_forward(_Module(), _heads_first(q), _heads_first(k), _heads_first(v), None,
                                               scaling=0.3, **features)
    assert weights is None and out.shape == (2, 11, 8, 16)
    check_attention(out, None, q, k, v, **reference)


def test_attention_function_with_padding_mask_and_cache(device):
    # Left padding; a decoding step (L = 2 new queries) against 9 keys already in the cache.
    mask = torch.tensor([[1] * 9, [0, 0, 0] + [1] * 6], device=device)
    q = randn(2, 2, 4, 16, dtype=torch.float16, device=device)
    k = randn(2, 9, 4, 16, dtype=torch.float16, device=device)
    v = randn(2, 9, 4, 16, dtype=torch.float16, device=device)
    sinks = torch.randn(4, device=device)
    out, _ = flashsdpa_attention_forward(_Module(), _heads_first(q), _heads_first(k), _heads_first(v), mask,
                                         scaling=0.25, s_aux=sinks, sliding_window=4)
    # Each sequence alone, over its real keys: bottom-right causal keeps decoding aligned.
    options = {"causal": True, "softmax_scale": 0.25, "sinks": sinks, "window_size": (3, 3)}
    check_attention(out[:1], None, q[:1], k[:1], v[:1], **options)
    check_attention(out[1:], None, q[1:], k[1:, 3:], v[1:, 3:], **options)


def test_attention_function_padded_queries_are_zero(device):
    mask = torch.tensor([[0, 0, 1, 1, 1]], device=device)
    x = randn(1, 5, 2, 8, dtype=torch.float32, device=device)
    out, _ = flashsdpa_attention_forward(_Module(), _heads_first(x), _heads_first(x), _heads_first(x), mask)
    assert bool((out[0, :2] == 0).all())
    check_attention(out[:, 2:], None, x[:, 2:], x[:, 2:], x[:, 2:], causal=True)


def test_attention_function_packed_sequences(device):
    # One row holding sequences of 3 and 4 tokens: position ids restart at each sequence.
    x = randn(1, 7, 2, 8, dtype=torch.float32, device=device)
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3]], device=device)
    out, _ = flashsdpa_attention_forward(_Module(), _heads_first(x), _heads_first(x), _heads_first(x), None,
                                         position_ids=position_ids)
    rows = x[0]
    cu = cu_seqlens([3, 4], device)
    check_attention(out[0], None, rows, rows, rows, cu_seqlens_q=cu, cu_seqlens_k=cu, causal=True)


def test_hub_kernel_signatures():
    # transformers inspects these signatures to decide which features to pass to a kernel module.
    for name, params in [("flash_attn_func", {"s_aux", "window_size", "softcap", "dropout_p", "deterministic"}),
                         ("flash_attn_varlen_func", {"s_aux", "window_size", "softcap", "block_table", "seqused_k",
                                                     "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"}),
                         ("flash_attn_with_kvcache", {"s_aux", "window_size", "softcap", "block_table",
                                                      "cache_seqlens", "rotary_cos", "num_splits"})]:
        signature = inspect.signature(getattr(flashsdpa, name))
        missing = params - set(signature.parameters)
        assert not missing, f"{name} lacks {missing}"


# ---------------------------------------------------------------------------------------------
# Tiny models against eager (needs transformers)


def _transformers():
    return pytest.importorskip(
        "transformers", reason="transformers is not installed (Debian 12 has no python3-transformers); "
                               "the tiny-model tests run where it is, e.g. the GPU machine")


def _llama_gqa(tf):
    return tf.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                          tie_word_embeddings=False)


def _gemma2_sliding_softcap(tf):
    return tf.Gemma2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                           attn_logit_softcapping=1.5, final_logit_softcapping=30.0, query_pre_attn_scalar=16,
                           max_position_embeddings=512)


def _gpt_oss_sinks(tf):
    return tf.GptOssConfig(vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                           num_experts_per_tok=2, sliding_window=8, max_position_embeddings=512,
                           layer_types=["sliding_attention", "full_attention"])


MODELS = {"llama-gqa": (_llama_gqa, ["gqa4"]),
          "gemma2-sliding-softcap": (_gemma2_sliding_softcap, ["window(7,7)", "softcap"]),
          "gpt-oss-sinks": (_gpt_oss_sinks, ["sinks", "window(7,7)"])}


@pytest.fixture(scope="module")
def tf():
    module = _transformers()
    import flashsdpa.integrations.transformers as integration

    integration.register()
    return module


def _model_pair(tf, make_config, device):
    torch.manual_seed(0)
    config = make_config(tf)
    eager = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(device).eval()
    with torch.no_grad():
        for name, parameter in eager.named_parameters():
            if name.endswith("sinks"):
                parameter.normal_(0.0, 1.0)  # visible sinks, not whatever the initialiser left
    ours = tf.AutoModelForCausalLM.from_config(config, attn_implementation="flashsdpa").to(device).eval()
    ours.load_state_dict(eager.state_dict())
    assert ours.config._attn_implementation == "flashsdpa"
    return eager, ours


def _traced(fn):
    flashsdpa.load_library()
    torch.ops.flashsdpa.trace_reset()
    torch.ops.flashsdpa.trace_enable(True)
    try:
        result = fn()
    finally:
        torch.ops.flashsdpa.trace_enable(False)
    return result, torch.ops.flashsdpa.trace_report()


@pytest.mark.parametrize("model", list(MODELS), ids=str)
def test_tiny_model_logits_match_eager(model, tf, device):
    make_config, features = MODELS[model]
    eager, ours = _model_pair(tf, make_config, device)
    input_ids = torch.randint(0, 256, (2, 24), device=device)
    with torch.no_grad():
        expected = eager(input_ids).logits
        logits, report = _traced(lambda: ours(input_ids).logits)
    assert report, "flashsdpa was not called"
    for feature in features:
        assert feature in report, f"{feature} did not reach the kernel:\n{report}"
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", list(MODELS), ids=str)
def test_tiny_model_padded_batch_matches_eager(model, tf, device):
    make_config, _ = MODELS[model]
    eager, ours = _model_pair(tf, make_config, device)
    input_ids = torch.randint(0, 256, (2, 20), device=device)
    mask = torch.ones(2, 20, dtype=torch.long, device=device)
    mask[1, :7] = 0  # left padding
    with torch.no_grad():
        expected = eager(input_ids, attention_mask=mask).logits
        logits, report = _traced(lambda: ours(input_ids, attention_mask=mask).logits)
    assert "varlen" in report, f"the padding mask did not become varlen sequences:\n{report}"
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", list(MODELS), ids=str)
def test_tiny_model_greedy_generation_matches_eager(model, tf, device):
    make_config, _ = MODELS[model]
    eager, ours = _model_pair(tf, make_config, device)
    prompt = torch.randint(0, 256, (2, 12), device=device)
    settings = {"max_new_tokens": 20, "min_new_tokens": 20, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        expected = eager.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
        tokens = ours.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
    assert tokens.shape == (2, 32)
    assert torch.equal(tokens, expected), f"generation diverged:\n{tokens}\n{expected}"
