"""E2E's evaluation pieces: the generation metrics against closed forms, and cutting a
pretrained causal LM to its first blocks against a model built with that many blocks."""
import math
import shutil

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from benchmarks.generation import METRICS, references, score, unavailable
from examples.pretrained import cut, decoder_layers, keep

REFS = [["there is a cheap pub near the river", "a cheap pub is by the river"], ["the eagle serves french food"]]


def test_metrics_of_a_perfect_and_a_disjoint_output():
    perfect = score([refs[0] for refs in REFS], REFS)
    disjoint = score(["zebra xylophone quartz umbrella velvet", "kiwi mango lemon lime pear"], REFS)
    assert set(perfect) == set(METRICS) == set(disjoint)
    assert perfect["BLEU"] == pytest.approx(100.0) and disjoint["BLEU"] == 0.0
    assert perfect["ROUGE-L"] == pytest.approx(1.0) and disjoint["ROUGE-L"] == 0.0
    assert perfect["CIDEr"] > 1.0 and disjoint["CIDEr"] == 0.0
    assert perfect["NIST"] > 1.0 and disjoint["NIST"] == 0.0
    if shutil.which("java"):
        assert perfect["METEOR"] == pytest.approx(1.0) and disjoint["METEOR"] < 0.05
    else:
        assert math.isnan(perfect["METEOR"]) and "java" in unavailable()["METEOR"]


def test_metrics_use_every_reference_and_check_lengths():
    second = score([REFS[0][1], REFS[1][0]], REFS)  # each output equals one of its references
    assert second["BLEU"] == pytest.approx(100.0) and second["ROUGE-L"] == pytest.approx(1.0)
    partial = score(["a cheap pub near the river", "the eagle serves food"], REFS)
    assert 0.0 < partial["BLEU"] < 100.0 and 0.0 < partial["ROUGE-L"] < 1.0
    with pytest.raises(ValueError, match="2 hypotheses for 1"):
        score(["a", "b"], REFS[:1])


def test_references_group_rows_by_mr_in_order():
    rows = [("b", "1"), ("a", "2"), ("b", "3")]
    assert references(rows) == {"b": ["1", "3"], "a": ["2"]} and list(references(rows)) == ["b", "a"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cut_equals_a_model_built_with_that_many_blocks(family):
    torch.manual_seed(0)
    if family == "llama":
        make = lambda n: LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,  # noqa: E731
                                                      num_attention_heads=4, num_key_value_heads=2,
                                                      num_hidden_layers=n))
    else:
        make = lambda n: GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_head=4, n_layer=n))  # noqa: E731
    deep = make(4).eval()
    short = make(2).eval()
    missing, unexpected = short.load_state_dict(deep.state_dict(), strict=False)
    assert not missing and unexpected  # the blocks 2 and 3 (and nothing else) are left over
    tokens = torch.randint(0, 97, (2, 7))
    cut_model = cut(deep, 2)
    assert len(decoder_layers(cut_model)) == 2 and cut_model.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(cut_model(tokens).logits, short(tokens).logits)
    assert cut(cut_model, None) is cut_model and cut(cut_model, 5) is cut_model
    with pytest.raises(ValueError, match="at least 1"):
        cut(make(3), 0)


def test_metrics_take_outputs_over_several_lines():
    """A model's output may hold newlines; they are whitespace to every metric (METEOR's Java
    protocol reads one line per segment)."""
    assert score(["there is a cheap pub\nnear the river", "the eagle  serves french food"], REFS) == \
        score([REFS[0][0], REFS[1][0]], REFS)


def test_keep_equals_a_model_built_from_those_blocks():
    """Blocks 0 and 3 of a 4-block Llama, renumbered, compute what a 2-block Llama holding their
    weights computes, with and without the key-value cache."""
    torch.manual_seed(0)
    config = lambda n: LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_attention_heads=4,  # noqa: E731
                                   num_key_value_heads=2, num_hidden_layers=n)
    deep, short = LlamaForCausalLM(config(4)).eval(), LlamaForCausalLM(config(2)).eval()
    state = {k.replace("layers.3.", "layers.1."): v for k, v in deep.state_dict().items()
             if ".layers.1." not in k and ".layers.2." not in k}
    short.load_state_dict(state)
    kept = keep(deep, [0, 3])
    assert [m.self_attn.layer_idx for m in decoder_layers(kept)] == [0, 1]
    tokens = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(kept(tokens).logits, short(tokens).logits)
        greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(kept.generate(tokens, **greedy), short.generate(tokens, **greedy))
    for bad in ([], [1, 0], [0, 0], [0, 2]):
        with pytest.raises(ValueError, match="increasing block numbers"):
            keep(kept, bad)
