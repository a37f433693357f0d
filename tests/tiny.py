"""Tiny random Hugging Face models (Llama, Qwen2, Qwen3) with a small trained tokenizer, built
with transformers and saved as safetensors: the references the Jittor model is checked against.

    folder = make_hf_model("qwen2", tmp_path / "qwen2")      # config.json, model.safetensors, tokenizer
    ref = load_reference(folder)                             # the transformers model (torch, fp32)

conftest.py builds each family once per test session (and converts it with weight_convert.py).
"""
from pathlib import Path

FAMILIES = ("llama", "qwen2", "qwen3")
VOCAB = 320
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]
CORPUS = ["hello there how are you", "the cat sat on the mat", "one two three four five six",
          "write a short poem about the sea", "what is the capital of france",
          "user assistant system you are kind", "the quick brown fox jumps over the lazy dog"]

# Small but not degenerate: grouped-query attention (4 query heads over 2 kv heads), 3 layers.
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              rms_norm_eps=1e-6, bos_token_id=4, eos_token_id=5, pad_token_id=0)


def hf_config(family):
    import transformers

    if family == "llama":   # untied lm_head, Llama-3 style rope scaling
        return transformers.LlamaConfig(**COMMON, tie_word_embeddings=False, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}, rope_theta=500000.0)
    if family == "qwen2":   # q/k/v bias, tied embeddings
        return transformers.Qwen2Config(**COMMON, tie_word_embeddings=True, rope_theta=1000000.0)
    if family == "qwen3":   # q/k RMSNorm, head_dim from the config (not hidden / heads)
        return transformers.Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=False)
    raise ValueError(family)


def make_tokenizer(chat_template=CHATML, vocab_size=VOCAB, corpus=CORPUS):
    """A byte-level BPE fast tokenizer trained on `corpus` in a moment, fully offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    fast.chat_template = chat_template
    return fast


def make_hf_model(family, folder, seed=0):
    """Save a random `family` model (fp32 safetensors) and the tokenizer into `folder`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = hf_config(family)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # random init is ~N(0, 0.02): widen it so logits are not all alike
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer = make_tokenizer()
    assert len(tokenizer) <= VOCAB
    tokenizer.save_pretrained(folder)
    return folder


def load_reference(folder):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32").eval()


def reference_greedy(ref, prompt_ids, max_new_tokens):
    """transformers' own greedy generate: the new token ids, without stopping at EOS."""
    import copy

    import torch

    config = copy.deepcopy(ref.generation_config)
    config.update(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt_ids]), generation_config=config)
    return out[0, len(prompt_ids):].tolist()
