"""What the tests share, in one module (tests/ is on pytest's pythonpath: `import support`).

- The repository root, ROOT.
- Tiny random Hugging Face models (Llama, Qwen2, Qwen3) with a small trained tokenizer, built with
  transformers and saved as safetensors: the references the Jittor model is checked against.

      folder = make_hf_model("qwen2", tmp_path / "qwen2")      # config.json, model.safetensors, tokenizer
      ref = load_reference(folder)                             # the transformers model (torch, fp32)

  conftest.py builds each family once per test session (and converts it with weight_convert.py).
- Draft heads for the decoding tests on CPU and GPU: seeded random heads (random_heads), and
  heads that know the base model's greedy continuation (OracleHeads), so drafts are accepted.
"""
import json
from pathlib import Path

import numpy as np

from medusa.heads.families import DraftHeads, HeadConfig, build_heads
from medusa.model.transformer import build_mask
from medusa.runtime.backend import jt
from medusa.training.args import TrainArgs

ROOT = Path(__file__).resolve().parent.parent   # the repository

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


# ---------------------------------------------------------------- draft heads for decoding tests
def random_heads(model, family, share=False, num_heads=4):
    """Seeded heads of `family` for the model, own vocab projections copied from its lm_head."""
    jt.set_global_seed(0)
    cfg = HeadConfig(family=family, num_heads=num_heads, hidden_size=model.config.hidden_size,
                     vocab_size=model.config.vocab_size, share_lm_head=share)
    return build_heads(cfg).init_from_base(model.lm_head_t())


class OracleHeads:
    """Fake heads that know the model's greedy continuation `ref` (prompt + new tokens).

    The position is found as the reference hidden state nearest to the given one; head k puts
    the true token t+k+2 at rank `rank` (rank 1: a wrong token first). Sequential oracles also
    check the drafted tokens they are fed and propose garbage for a wrong path.

    Heads right part of the time: `rank` may be a tuple, the rank of the true token ref[j] being
    rank[j % len(rank)]; with `wrong_every` m > 0 the tokens ref[j] with j % m == 0 are never
    proposed (every head drafts a wrong token in their place). `family` ("medusa", "rnn", "moe")
    runs random_heads of that family under the oracle: their logits are added to the oracle's
    (scaled above them), so the family's forward and its sequential flag are the ones decoding
    meets."""

    def __init__(self, model, ref, rank=0, sequential=False, num_heads=4, wrong_every=0, family=None):
        self.config = HeadConfig(num_heads=num_heads, hidden_size=model.config.hidden_size,
                                 vocab_size=model.config.vocab_size)
        self.ref, self.sequential, self.wrong_every = list(ref), sequential, wrong_every
        self.ranks = tuple(rank) if isinstance(rank, (tuple, list)) else (rank,)
        self.base = None if family is None else random_heads(model, family, num_heads=num_heads)
        if self.base is not None:
            self.sequential = self.base.sequential
        T = len(ref)
        tokens = jt.array(np.asarray(ref, dtype=np.int32)[None])
        positions = jt.array(np.arange(T, dtype=np.int32)[None])
        self.states = model(tokens, positions, build_mask(1, T)).numpy()[0]   # [T, H]
        self.calls = 0

    prefix = None                          # no prefix layer: the DraftHeads methods that say so
    prefix_state = DraftHeads.prefix_state
    read_prefix = DraftHeads.read_prefix

    def rank_of(self, j):
        """The rank at which ref[j] is proposed, None when it is not proposed at all."""
        if self.wrong_every and j % self.wrong_every == 0:
            return None
        return self.ranks[j % len(self.ranks)]

    def __call__(self, hidden, tokens, lm_head_t, embed_weight, project=None, prefixed=False):
        self.calls += 1
        h = hidden.numpy()[0]                                                  # [T, H]
        drafted = None if tokens is None else tokens.numpy()[0]
        K, V = self.config.num_heads, self.config.vocab_size
        out = np.zeros((K, 1, h.shape[0], V), np.float32)
        for t, state in enumerate(h):
            i = int(np.argmin(((self.states - state) ** 2).sum(-1)))
            for k in range(K):
                j = i + k + 2
                target = self.ref[j] if j < len(self.ref) else 0
                rank = self.rank_of(j)
                if rank is None:                     # not proposed, at any rank: a wrong token first
                    out[k, 0, t, target] = -10.0
                    target, rank = (target + 7) % V, 0
                elif self.sequential and list(drafted[t, :k + 1]) != self.ref[i + 1:j]:
                    target = (target + 7) % V        # wrong path fed: propose a wrong token
                out[k, 0, t, (target + 1) % V] = 9.0 if rank == 1 else 1.0
                out[k, 0, t, target] = 10.0 if rank == 0 else 5.0
        project = range(K) if project is None else list(project)
        logits = jt.array(out[list(project)])
        if self.base is None:
            return logits, jt.zeros((1,))
        real, aux = self.base(hidden, tokens, lm_head_t, embed_weight, project=project, prefixed=prefixed)
        return logits * 1000.0 + real, aux


# ---------------------------------------------------------------- training runs on the tiny models
WORDS = "hello there how are you the cat sat on mat one two three four five six sea".split()


def chat_file(path, n=24, seed=0, extra=()):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        ask = " ".join(rng.choice(WORDS, 4))
        reply = " ".join(rng.choice(WORDS[:8], int(rng.integers(6, 14))))   # a small, learnable language
        lines.append({"conversations": [{"from": "human", "value": ask}, {"from": "gpt", "value": reply}]})
    path.write_text("".join(json.dumps(x) + "\n" for x in list(lines) + list(extra)))
    return path


def tiny_args(tiny_pkl, tmp_path, family="medusa", **kw):
    base = dict(jittor_base_weights=str(tiny_pkl("qwen2")), data_path=str(chat_file(tmp_path / "chat.jsonl")),
                output_dir=str(tmp_path / f"out-{family}"), cache_dir=str(tmp_path / "cache"),
                family=family, medusa_num_heads=3, epochs=2, batch_size=4, lr=1e-2, warmup_ratio=0.1,
                max_length=64, val_ratio=0.2, device="cpu", moe_num_experts=3, moe_top_k=2)
    return TrainArgs(**dict(base, **kw))


class FixedScores:
    """steps.TreeScores stand-in for the acceptance rules: fixed logits rows per node, the full vocabulary."""

    def __init__(self, rows):
        from types import SimpleNamespace

        from medusa.model.transformer import VocabMap

        self.rows = rows
        self.model = SimpleNamespace(vocab=VocabMap(SimpleNamespace(kept_ids=None, embedding_sliced=False)))

    def row(self, node):
        return self.rows[node]
