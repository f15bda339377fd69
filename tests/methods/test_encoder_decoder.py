"""Encoder-decoder classifiers (T5, BART): the methods that change blocks change the encoder's and the decoder's,
as PEFT does for IA3; freeze counts layers in forward order (the last layers are the decoder's)."""
import pytest
import torch
import transformers as T
from peft import IA3Config, get_peft_model

from helpers import apply, method_params
from test_architectures import CONFIGS, EOS
from tuneforge.methods.adapter import AdapterLayer
from tuneforge.methods.ia3 import IA3Layer
from tuneforge.methods.layers import block_stacks

STACKS = {"t5": ["transformer.encoder.block", "transformer.decoder.block"],
          "bart": ["model.encoder.layers", "model.decoder.layers"]}
IA3_TARGETS = {"t5": (["k", "v", "wo"], ["wo"]), "bart": (["k_proj", "v_proj", "fc2"], ["fc2"])}


def classifier(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return T.AutoModelForSequenceClassification.from_config(CONFIGS[family]()).eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 6, 7, 8, EOS], [9, 10, 11, EOS, 0]])  # (2, 5): each row ends in EOS, the last padded
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.mark.parametrize("family", STACKS)
def test_the_blocks_are_the_encoders_then_the_decoders(family):
    assert [name for name, _ in block_stacks(classifier(family))] == STACKS[family]


@pytest.mark.parametrize("config", [T.T5Config, T.MT5Config, T.UMT5Config])
@pytest.mark.parametrize("method", ["freeze", "ia3", "adapter", "prompt"])
def test_a_t5_token_classifier_is_its_encoder_alone(config, method):
    """T5-family token classifiers hold the encoder only (UMT5's keeps is_encoder_decoder and returns the
    encoder model as its decoder): one stack, changed once, and the virtual-token methods apply."""
    torch.manual_seed(0)
    model = T.AutoModelForTokenClassification.from_config(config(vocab_size=64, d_model=32, d_kv=8, d_ff=64,
                                                                 num_layers=2, num_heads=4))
    assert [name for name, _ in block_stacks(model)] == ["transformer.encoder.block"]
    model = apply(model, method)
    assert {".".join(n.split(".")[:4]) for n in method_params(model) if ".block." in n} <= \
        {f"transformer.encoder.block.{i}" for i in (0, 1)}
    if method == "adapter":  # one after attention, one after the FFN, per block
        assert sum(isinstance(m, AdapterLayer) for m in model.modules()) == 4
    if method == "freeze":  # the last two of two blocks
        assert {n.split(".")[3] for n in method_params(model) if ".block." in n} == {"0", "1"}


@pytest.mark.parametrize("family", STACKS)
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_ia3_scales_what_peft_scales_in_both_stacks_with_its_logits(family):
    """PEFT's IA3 on keys, values and FFN down projections (its T5 default: k, v, wo; its BART default scales
    q_proj, not k_proj), cross-attention too: the same modules; with our vectors copied in, the same logits
    (both heads start from one seed)."""
    ours = apply(classifier(family), "ia3")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, IA3Layer):
                m.ia3.add_(torch.randn(m.ia3.shape, generator=g) * 0.3)
    targets, ffn = IA3_TARGETS[family]
    twin = get_peft_model(classifier(family), IA3Config(task_type="SEQ_CLS", target_modules=targets,
                                                        feedforward_modules=ffn)).eval()
    vectors = {n: m.ia3 for n, m in ours.named_modules() if isinstance(m, IA3Layer)}
    theirs = {n.removeprefix("base_model.model."): m for n, m in twin.named_modules() if hasattr(m, "ia3_l")}
    assert set(theirs) == set(vectors)
    assert all(any(n.startswith(s) for n in vectors) for s in STACKS[family])
    with torch.no_grad():
        for n, m in theirs.items():
            m.ia3_l["default"].copy_(vectors[n].view(m.ia3_l["default"].shape))
        assert torch.allclose(twin(**batch()).logits, ours(**batch()).logits, atol=1e-6)


@pytest.mark.parametrize("family", STACKS)
def test_adapters_follow_every_block_of_both_stacks(family):
    model = apply(classifier(family), "adapter")
    wrapped = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    layers = sum(len(layers) for _, layers in block_stacks(model))
    assert len(wrapped) == 2 * layers  # after attention and after the FFN
    assert all(sum(n.startswith(s + ".") for n in wrapped) == 2 * 2 for s in STACKS[family])


@pytest.mark.parametrize("family", STACKS)
@pytest.mark.parametrize("options, blocks", [
    ({}, ["decoder.0", "decoder.1"]),  # the last two in forward order
    ({"which": "first", "num_layers": 3}, ["encoder.0", "encoder.1", "decoder.0"]),
    ({"layer_indices": [1, -1]}, ["encoder.1", "decoder.1"]),
])
def test_freeze_counts_the_encoders_layers_then_the_decoders(family, options, blocks):
    model = apply(classifier(family), "freeze", **options)
    parts = [n.split(".") for n in method_params(model)]  # e.g. transformer.decoder.block.1.layer.0...
    assert sorted({f"{p[1]}.{p[3]}" for p in parts}) == sorted(blocks)


def test_virtual_tokens_on_an_encoder_decoder_are_refused_for_what_they_are_not_for_their_length():
    """BART's 64 positions at max_length 64 + 20 virtual tokens: the position check leaves it to the method's
    refusal (shortening the rows would only lead to it)."""
    from tuneforge.config import ConfigError, load_config
    from tuneforge.models import check_max_length

    cfg = load_config(None, {"model": {"name": "bart", "max_length": 64}, "method": {"name": "prompt"}})
    check_max_length(classifier("bart"), cfg)
    with pytest.raises(ConfigError, match="is an encoder-decoder model"):
        apply(classifier("bart"), "prompt")
