"""Tiny Hugging Face models built from configs (no hub), shared by the tests."""
import torch
from transformers import (
    BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
    RobertaConfig, RobertaForSequenceClassification, ViTConfig, ViTForImageClassification,
)

ENCODER = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=100)


def gpt2(n_layer=2, n_embd=32, seed=0, **kw):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=100, n_positions=64,
                                      bos_token_id=0, eos_token_id=0, **kw))


def roberta():
    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(**ENCODER, pad_token_id=1, bos_token_id=0, eos_token_id=2))


def bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**ENCODER))


def llama(tie=True):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**ENCODER, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0))


def vit():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                               intermediate_size=64, image_size=32, patch_size=8))
