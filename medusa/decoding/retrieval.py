"""A draft source that needs no training: continuations of the text so far, found in the text so far.

Structured output repeats itself: a JSON record's keys, quotes and punctuation come back on every
line, and an answer quotes its prompt. Prompt lookup decoding (Saxena 2023) drafts from that: take
the last n tokens of the prompt plus what was generated, find where they occurred before, and
propose the tokens that followed there. Here the n-grams of n = max_ngram down to min_ngram are
tried, most specific first and most recent first, until `branches` different continuations of up
to `depth` tokens are found; they are merged into one token tree (a trie: continuations sharing a
prefix share its nodes) of at most `max_nodes` nodes, which the base model verifies in one call as
it verifies the heads' trees. So the tree changes from step to step; the acceptance rules are the
heads' (greedy: lossless; typical; speculative sampling, exact for a deterministic draft).

    medusa generate --draft retrieval --prompt "..."          # no heads file needed
    python test_medusa_benchmark.py --draft retrieval --greedy
    medusa generate --draft heads+retrieval --prompt "..."    # both: merged into one tree a step

RetrievalDrafter offers the part of the heads' interface the Medusa loop reads (config.family,
config.num_heads, prefix_state, read_prefix), so the loop takes it where it takes heads;
RetrievalStepper is the host loop's step with a per-step tree (decoding/stepper.py). With heads
too (MergedDraft, MergedStepper) the continuations are merged into the heads' tree, sharing its
nodes where they agree, on a node budget of their own.
"""
from dataclasses import asdict, dataclass

import numpy as np

from medusa.decoding import steps
from medusa.decoding.stepper import HostStepper
from medusa.decoding.tree_vars import resolve_tree
from medusa.runtime.errors import UsageError


# RetrievalConfig's settings by device. A CPU pays for every verified row: one chain of the most
# recent match of the last 2-4 tokens won there (December 8, SmolLM2, greedy, 2 quiet cores; a
# chain of <= 8 against the trie of 4 continuations from 1-4-gram matches in <= 24 nodes: bench
# chat prompts 1.63x / 1.33x, cabin JSON held-out 1.94x / 1.78x; checked on prompts these were not
# chosen on: 20 held-out chat prompts 1.46x / 1.27x, cabin train prompts: results/retrieval_cpu_2026-12-08/).
# A GPU verifies rows almost free: the wider trie there (not yet measured on a GPU).
DEVICE_DEFAULTS = {"cpu": dict(min_ngram=2, branches=1, max_nodes=8), "cuda": dict()}


@dataclass(frozen=True)
class RetrievalConfig:
    max_ngram: int = 4          # the longest suffix looked up
    min_ngram: int = 1          # the shortest one tried when no longer one occurred before
    depth: int = 8              # tokens in one continuation
    branches: int = 4           # continuations merged into one tree
    max_nodes: int = 24         # tree nodes after the root
    family: str = "retrieval"   # what results files record where heads record their family

    def __post_init__(self):
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise UsageError(f"retrieval drafting needs 1 <= min_ngram <= max_ngram, got {self.min_ngram}, "
                             f"{self.max_ngram}")
        for name in ("depth", "branches", "max_nodes"):
            if getattr(self, name) < 1:
                raise UsageError(f"retrieval drafting: {name} must be >= 1, got {getattr(self, name)}")

    @property
    def num_heads(self) -> int:
        """The deepest node a tree may have (the heads' count plays that role for heads)."""
        return self.depth

    def to_dict(self) -> dict:
        return asdict(self)


class NgramIndex:
    """A growing token list and, for every n-gram of it (min_n <= n <= max_n), the positions just
    after its occurrences, in order. extend() and truncate() keep both in step."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.ids, self.after = [], {}

    def __len__(self):
        return len(self.ids)

    def extend(self, tokens):
        for t in tokens:
            self.ids.append(int(t))
            end = len(self.ids)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.after.setdefault(tuple(self.ids[end - n:]), []).append(end)

    def truncate(self, length: int):
        """Forget the tokens from `length` on (a vocabulary check took them back)."""
        while len(self.ids) > length:
            end = len(self.ids)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                key = tuple(self.ids[end - n:])
                self.after[key].pop()
                if not self.after[key]:
                    del self.after[key]
            self.ids.pop()

    def continuations(self, depth: int, branches: int) -> list:
        """Up to `branches` different continuations (tuples of <= depth tokens) of the list's
        end: what followed earlier occurrences of its last n tokens, longest n first, the most
        recent occurrence first."""
        ids, end, found = self.ids, len(self.ids), []
        for n in range(min(self.max_n, end), self.min_n - 1, -1):
            for start in reversed(self.after.get(tuple(ids[end - n:]), ())):
                if start >= end:                        # the end itself
                    continue
                cont = tuple(ids[start:start + depth])
                if cont not in found:
                    found.append(cont)
                    if len(found) == branches:
                        return found
        return found


class TokenTrie:
    """Token sequences merged by common prefix, in the order they were added (a node's children
    are ranked by when they first appeared)."""

    def __init__(self):
        self.children, self.nodes = {(): []}, 0          # token prefix -> its children's tokens

    def add(self, seq, budget: int):
        """Add seq's tokens until `budget` new nodes were made in this call."""
        prefix, made = (), 0
        for t in seq:
            key = prefix + (int(t),)
            if key not in self.children:
                if made == budget:
                    return
                self.children[prefix].append(int(t))
                self.children[key] = []
                self.nodes, made = self.nodes + 1, made + 1
            prefix = key

    def add_all(self, sequences, budget: int):
        """Add the sequences in order until `budget` new nodes were made in this call."""
        start = self.nodes
        for seq in sequences:
            self.add(seq, budget - (self.nodes - start))
        return self

    def paths(self):
        """(the tree as sibling-rank paths, as tree presets are written; the token of each path)."""
        paths, tokens = [], {}

        def walk(prefix, ranks):
            for rank, t in enumerate(self.children[prefix]):
                path = ranks + (rank,)
                paths.append(list(path))
                tokens[path] = t
                walk(prefix + (t,), path)

        walk((), ())
        return paths, tokens


def tree_of(trie: TokenTrie, root: int, max_depth: int):
    """(Tree, tokens [N] int64, node 0 the root) of a trie; an empty one becomes one node
    guessing the root repeats (a decode step and one row more)."""
    paths, tokens_of = trie.paths()
    if not paths:
        paths, tokens_of = [[0]], {(0,): root}
    tree = resolve_tree(paths, max(max_depth, max(len(p) for p in paths)))
    order = sorted(paths, key=lambda p: (len(p), p))       # build_tree_buffers' node order
    return tree, np.array([root] + [tokens_of[tuple(p)] for p in order], dtype=np.int64)


class RetrievalDrafter:
    """The draft source of `--draft retrieval` (the module docstring)."""

    retrieval = True
    sequential = False
    draft_vocab = None

    def __init__(self, config: RetrievalConfig = None):
        self.config = config or RetrievalConfig()

    @property
    def max_tree_nodes(self) -> int:
        return self.config.max_nodes + 1

    def prefix_state(self):
        return None

    def read_prefix(self, state, hidden_new):
        return hidden_new[:, -1:]

    def index(self, ids) -> NgramIndex:
        index = NgramIndex(self.config.min_ngram, self.config.max_ngram)
        index.extend(ids)
        return index

    def propose(self, index: NgramIndex, trie: TokenTrie = None):
        """The next tree after the index's tokens (its last one is the root) -> (Tree, tokens [N]
        int64, node 0 the root): the continuations found, added to `trie` (the heads' tree, when
        both draft) with a budget of max_nodes nodes of their own."""
        cfg = self.config
        trie = (trie or TokenTrie()).add_all(index.continuations(cfg.depth, cfg.branches), cfg.max_nodes)
        return tree_of(trie, index.ids[-1], cfg.depth)


class MergedDraft:
    """`--draft heads+retrieval`: the heads and the retrieval drafter together, in the heads'
    place in the loop (which then takes MergedStepper); the rest of the heads' interface is theirs."""

    merged = True

    def __init__(self, heads, drafter: RetrievalDrafter):
        self.heads, self.drafter = heads, drafter

    @property
    def config(self):
        return self.heads.config

    @property
    def draft_vocab(self):
        return self.heads.draft_vocab

    def prefix_state(self):
        return self.heads.prefix_state()

    def read_prefix(self, state, hidden_new):
        return self.heads.read_prefix(state, hidden_new)


class RetrievalStepper(HostStepper):
    """The host loop's step (HostStepper) on the tree the drafter proposes after the tokens so
    far: the prompt, then every token emitted, kept in step with the cache (which holds all but
    the root)."""

    def __init__(self, model, drafter, cache, sampling, rng, prompt_ids, keep_rows=False):
        super().__init__(model, drafter, None, cache, sampling, rng, None, keep_rows)
        self.drafter, self.context = drafter, drafter.index(prompt_ids)

    def follow(self, root):
        """The context after the cache's tokens (a vocabulary check may have taken some back) and root."""
        self.context.truncate(self.cache.length)
        self.context.extend([root])

    def draft(self, root, hidden_last, laps=None):
        self.follow(root)
        self.tree, self.tokens = self.drafter.propose(self.context)
        if laps is not None:
            laps("medusa")

    def step(self, room, eos_ids, laps):
        out = super().step(room, eos_ids, laps)
        self.context.extend(out.new[:-1])                  # the accepted drafts; the last is the next root
        return out


class MergedStepper(RetrievalStepper):
    """`--draft heads+retrieval`: each step's tree is the heads' tree (their tokens on the tree
    `choices`), with the retrieved continuations merged into it (sharing the nodes where they
    agree with the heads) on a budget of their own; the host loop's step verifies it."""

    def __init__(self, model, heads, drafter, heads_tree, cache, sampling, rng, prompt_ids, state=None,
                 keep_rows=False):
        super().__init__(model, drafter, cache, sampling, rng, prompt_ids, keep_rows)
        self.heads, self.state, self.heads_tree = heads, state, heads_tree

    def draft(self, root, hidden_last, laps=None):
        self.follow(root)
        drafted = steps.propose(self.model, self.heads, self.heads_tree, hidden_last, root)
        trie = TokenTrie()
        for row in self.heads_tree.buffers.retrieve_indices:   # its paths: a leaf each, in the tree's order
            trie.add(drafted[row[1:][row[1:] >= 0]], self.heads_tree.num_nodes)
        self.tree, self.tokens = self.drafter.propose(self.context, trie)
        if laps is not None:
            laps("medusa")
