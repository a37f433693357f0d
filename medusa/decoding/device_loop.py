"""The greedy Medusa step kept on the device: one graph per step and one fetch of a few ints.

DeviceStepper is the loop's other Stepper (stepper.py): the tree forward, every node's argmax,
the longest accepted path (evaluate_posterior's greedy rule, first path on ties), the cache
moves of that path and the next tree's tokens from the heads all run as one Jittor graph;
only [accepted length, the path's tokens, the bonus] comes back. The tables it needs are
TreeBuffers' (tree.py) as Jittor index vars: PathTables for the path search and the heads'
candidates, DraftTables for heads that read the drafted tokens (rnn), drafted by gathers.

The option device_loop ($MEDUSA_DEVICE_LOOP): auto (the default: on a GPU) | on (anywhere: the
CPU tests run it so) | off. On the H200 (December) the end-to-end SmolLM2 bench went from 218 to
365 Medusa tokens/s with it (and rows_layer); tests/test_gpu.py::test_device_loop_on_cuda holds
it to the host loop there.
"""
import functools
from dataclasses import dataclass

import numpy as np

import medusa.runtime.options as options
from medusa.decoding import core
from medusa.decoding.stepper import Step, clip
from medusa.decoding.steps import topk_indices
from medusa.decoding.tree_vars import device_ints
from medusa.runtime.backend import jt


def device_loop_wanted() -> bool:
    """The device-loop option asks for it here (`auto`: on a GPU)."""
    mode = options.current().device_loop
    return mode == "on" or (mode == "auto" and bool(jt.flags.use_cuda))


def device_loop_ok(model, heads, sampling, checked=False) -> bool:
    """The device loop serves this call: greedy, heads over the whole vocabulary (no draft
    vocabulary), the base's full vocabulary, no vocabulary check (`checked`), and the option
    asks for it. Every head family is served: rnn's depth-by-depth drafting and a prefix layer
    run on the device too. On the CPU the host loop is faster: it skips the leaves' logits,
    which the device loop computes for every node."""
    return (device_loop_wanted() and sampling.kind == "greedy" and getattr(heads, "draft_vocab", None) is None
            and not model.vocab.reduced and not checked)


@dataclass(frozen=True)
class PathTables:
    """A tree's tables for the path search and the heads' candidates, as device index vars."""
    parent: object              # jt [N - 1] int32 parent node of nodes 1..N-1
    rows: object                # jt [P, depth + 1] int32 root-to-leaf node ids, padding 0 (path_rows)
    valid: object               # jt [P, depth + 1] int32 1 where a path has a node (valid_mask)
    order: object               # jt [P] int32 P - 1 - p: ties between equal lengths go to the first path
    slots: object               # jt [sum(topk)] int32 candidate_slots: each candidate in the flat top-k
    tree_indices: object        # jt [N] int32 node -> flat candidate


@functools.lru_cache(maxsize=32)
def path_tables(tree) -> PathTables:
    buf = tree.buffers
    P = buf.retrieve_indices.shape[0]
    return PathTables(parent=device_ints(buf.parent[1:]), rows=device_ints(buf.path_rows),
                      valid=device_ints(buf.valid_mask), order=device_ints(np.arange(P)[::-1]),
                      slots=device_ints(buf.candidate_slots), tree_indices=device_ints(buf.tree_indices))


@dataclass(frozen=True)
class DraftTables:
    """steps._propose_sequential's bookkeeping as index tables. The tokens drafted so far live
    in one vector, `seq` = [0 (padding), root, depth-1 children, depth-2 children, ...]; per depth
    d with children: ancestry [P_d, num_heads] positions in seq of each parent's root-to-parent
    tokens (0: padding), children [C_d] where each child's token sits in that depth's top-k
    [P_d * topk[d]]; node_pos [N]: each node's position in seq."""
    ancestry: list
    children: list
    node_pos: object


@functools.lru_cache(maxsize=32)
def draft_tables(tree, num_heads) -> DraftTables:
    buf = tree.buffers
    pos = {0: 1}
    ancestry, children = [], []
    for d in range(buf.depth):
        parents = [n for n in buf.nodes_at_depth[d] if buf.children[n]]
        if not parents:                    # no deeper nodes
            break
        table = np.zeros((len(parents), num_heads), np.int32)
        for i, p in enumerate(parents):
            table[i, :d + 1] = [pos[a] for a in buf.ancestry[p]]
        kids = [(i, c) for i, p in enumerate(parents) for c in buf.children[p]]
        base = 1 + len(pos)                # seq's length before this depth's children
        for j, (_, c) in enumerate(kids):
            pos[c] = base + j
        ancestry.append(device_ints(table))
        children.append(device_ints([i * buf.topk[d] + buf.rank[c] for i, c in kids]))
    return DraftTables(ancestry=ancestry, children=children,
                       node_pos=device_ints([pos[n] for n in range(tree.num_nodes)]))


def propose_on_device(model, heads, tree, tables, hidden_last, root):
    """steps.propose without leaving the device: root jt [1] int32 -> the next tree's tokens jt [1, N]."""
    if getattr(heads, "sequential", False):
        return _propose_sequential_on_device(model, heads, tree, hidden_last, root)
    buf = tree.buffers
    logits, _ = heads(hidden_last, None, model.lm_head_t(), model.embed_weight(), project=range(buf.depth),
                      prefixed=True)
    top = topk_indices(logits[:, 0, 0], max(buf.topk)).int32()                     # [depth, kmax]
    flat = jt.concat([root.reshape(1), top.reshape(-1)[tables.slots]])              # [1 + sum(topk)]
    return flat[tables.tree_indices].reshape(1, -1)


def _propose_sequential_on_device(model, heads, tree, hidden_last, root):
    """Depth by depth (rnn heads), each parent's drafted tokens gathered from the vector of
    tokens drafted so far (DraftTables), its children appended."""
    buf, K = tree.buffers, heads.config.num_heads
    tables = draft_tables(tree, K)
    seq = jt.concat([jt.zeros((1,), "int32"), root.reshape(1).int32()])
    for d in range(len(tables.ancestry)):
        drafted = seq[tables.ancestry[d]].unsqueeze(0)                                # [1, P_d, K]
        hidden = hidden_last.broadcast((1, drafted.shape[1], hidden_last.shape[-1]))
        logits, _ = heads(hidden, drafted, model.lm_head_t(), model.embed_weight(), project=[d], prefixed=True)
        top = topk_indices(logits[0, 0], buf.topk[d]).int32()                          # [P_d, topk[d]]
        seq = jt.concat([seq, top.reshape(-1)[tables.children[d]]])
    return seq[tables.node_pos].reshape(1, -1)


def verify(model, cache, tree, tokens):
    """The base model on the tree's nodes at positions cache.length + depth -> hidden [1, N, H]."""
    past = cache.length
    return core.forward(model, tokens, tree.positions + past, tree.mask(past), cache)


def node_argmax(model, hidden):
    """Every node's greedy next token: jt [N] int32."""
    return jt.argmax(model.logits(hidden)[0], 1)[0].int32()


def accept(tree, tables, tokens, argmax):
    """The longest accepted path (evaluate_posterior's greedy rule, first path on ties) ->
    (n jt [1]: its length, root included; path jt [depth + 1]: its node ids, padded; nodes:
    the path with the padding repeating its last node; last jt [1]: that node; bonus jt [1]:
    the token after it)."""
    depth = tree.buffers.depth
    ok = jt.concat([jt.ones((1,), "int32"), (tokens[0, 1:] == argmax[tables.parent]).int32()])   # the root: always
    accepted = ok[tables.rows] * tables.valid
    lengths = (jt.cumsum(1 - accepted, dim=1) == 0).int32().sum(1)                       # leading ones, [P]
    best = jt.argmax(lengths * accepted.shape[0] + tables.order, 0)[0]                    # longest, then first
    n = lengths[best]                                                                     # [1]
    path = tables.rows[best].reshape(-1)                                                  # [depth + 1]
    index = jt.arange(depth + 1).int32()
    last = path[n - 1]
    nodes = jt.where(index < n, path, last.broadcast(path.shape))                        # past the path: repeats
    return n, path, nodes, last, argmax[last]


def path_state(heads, state, hidden, nodes, last, n):
    """What the heads draft the next tree from: the path's last state [1, 1, H], or after a
    prefix layer (state) its output there, having read the path's states."""
    if state is None:
        return hidden[:, last].reshape(1, 1, -1)
    return heads.read_prefix_row(state, hidden[:, nodes], n - 1)


def device_step(model, heads, cache, tree, tables, tokens, state=None):
    """One greedy Medusa step built on the device (the module docstring; after a prefix layer
    read the path's states: state from heads.prefix_state()). Nothing is fetched: returns
    (fetch jt [depth + 2] int32 = [accepted length n, the path's tokens after the root..., bonus],
    the next tokens, the cache move to sync with them). Its stages, in order: verify,
    node_argmax, accept, the cache move, path_state and propose_on_device (bench/step_profile.py
    times each)."""
    past = cache.length
    hidden = verify(model, cache, tree, tokens)                                           # [1, N, H]
    n, path, nodes, last, bonus = accept(tree, tables, tokens, node_argmax(model, hidden))
    moved = cache.move(past, nodes + past)
    fetch = jt.concat([n.int32(), tokens[0][path[1:]], bonus.reshape(1)])
    hidden_last = path_state(heads, state, hidden, nodes, last, n)
    return fetch, propose_on_device(model, heads, tree, tables, hidden_last, bonus.reshape(1)), moved


def advance(model, heads, cache, tree, tables, tokens, state=None):
    """Run one device_step, fetch its few ints and keep the accepted path in the cache (and in
    the prefix layer's: state) -> (fetched int64 [depth + 2]: accepted length n, the path's
    tokens, the bonus; the next tokens)."""
    past = cache.length
    fetch, next_tokens, moved = device_step(model, heads, cache, tree, tables, tokens, state)
    jt.sync([fetch, next_tokens] + ([moved] if moved is not None else []))
    got = fetch.numpy().astype(np.int64)
    cache.truncate(past + int(got[0]))                     # the root and the accepted nodes
    if state is not None:
        heads.keep_prefix(state, int(got[0]))
    return got, next_tokens


class DeviceStepper:
    """The Stepper of the device loop: each step is advance(), booked as "tree" (its parts run
    as one graph); the step's graph also drafts the next tree, so `draft` after a step only
    takes that one, and drafts itself only after the prefill."""

    def __init__(self, model, heads, tree, cache, state=None):
        self.model, self.heads, self.tree, self.cache, self.state = model, heads, tree, cache, state
        self.tables = path_tables(tree)
        self.tokens = self.drafted = None                    # jt [1, N]: the tree to verify, the next one

    def draft(self, root, hidden_last, laps=None):
        if self.drafted is not None:
            self.tokens, self.drafted = self.drafted, None
            return
        self.tokens = propose_on_device(self.model, self.heads, self.tree, self.tables, hidden_last,
                                        jt.array(np.array([root], np.int32)))
        self.tokens.sync()

    def step(self, room, eos_ids, laps):
        cache_start, depth = self.cache.length, self.tree.buffers.depth
        got, self.drafted = advance(self.model, self.heads, self.cache, self.tree, self.tables, self.tokens,
                                    self.state)
        n = int(got[0])
        new = clip([int(t) for t in got[1:n]] + [int(got[depth + 1])], eos_ids, room)
        laps("tree")
        return Step(new, laps.stats, cache_start, new[-1] in eos_ids or len(new) >= room)
