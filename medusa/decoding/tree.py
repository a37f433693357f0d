"""Medusa candidate trees: presets, loading/validation, and the buffers tree decoding needs.

A tree is plain data, `medusa_choices`: a list of paths (lists of ints). Path [i, j] means
"the i-th top candidate of head 0, followed by the j-th top candidate of head 1". The root
(node 0) is the token chosen from the base model's own logits; path p becomes node
1 + (position of p in the paths sorted by (len, path)), the order Medusa uses.

`build_tree_buffers(choices)` is one pure numpy function of the tree and the one place its
derived tables are computed (TreeBuffers); decoding/tree_vars.py and decoding/device_loop.py only
copy them into Jittor vars. No Jittor here: settings and the torch side of the GPU benchmark read
this module. Reference: FasterDecoding/Medusa, medusa/model/utils.py (`generate_medusa_buffers`)
and medusa/model/medusa_choices.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medusa.runtime.errors import UsageError
from medusa.runtime.files import PACKAGE_DIR

TREES_DIR = PACKAGE_DIR / "trees"


class TreeError(UsageError):
    """A tree spec that cannot be used: unknown preset, unreadable file, bad paths, too deep."""


def chain_tree(depth: int) -> list[list[int]]:
    """The single top-1 chain [[0], [0, 0], ...] of `depth` nodes (one per head)."""
    if depth < 1:
        raise TreeError(f"chain tree needs depth >= 1, got {depth}")
    return [[0] * d for d in range(1, depth + 1)]


# Limits of a tree spec, checked before any buffer is built: each rank costs the heads one top-k
# pass per step (on the CPU an argmax each), the tree's attention block is N x N.
MAX_RANK = 255                  # a path entry: the (MAX_RANK + 1)-th best candidate of a head at most
MAX_NODES = 1024                # paths in a tree (the largest preset has 63)
MAX_FILE_BYTES = 1 << 20        # a tree file


def _load_json_paths(path: Path | str) -> list:
    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            raise TreeError(f"tree file {path}: {Path(path).stat().st_size} bytes, over the limit of "
                            f"{MAX_FILE_BYTES} for a tree of at most {MAX_NODES} paths: is it a tree file?")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise TreeError(f"tree file {path}: cannot read it ({e})") from e
    except RecursionError:
        raise TreeError(f"tree file {path}: nested too deeply; expected a list of paths like [[0], [0, 0], [1]]") from None
    except json.JSONDecodeError as e:
        raise TreeError(f"tree file {path}: not valid JSON ({e}); expected a list of paths like [[0], [0, 0], [1]]") from e


PRESETS: dict[str, list[list[int]]] = {
    # Medusa's 8-node example tree: chain of 4 along top-1 plus top-2 branches at depths 1-3.
    "8_node": [[0], [0, 0], [1], [0, 1], [0, 0, 0], [1, 0], [1, 0, 0], [0, 0, 0, 0]],
    # Wider at depth 1 (top-3 of head 0), two branches at depth 2, then a top-1 chain to
    # depth 4: spends nodes where heads are least sure, i.e. the first step.
    "8_node_2": [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]],
    # 4 + 6 + 4 + 2 nodes at depths 1..4: widths shrink with depth as acceptance falls.
    "16_node": [[0], [1], [2], [3], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0],
                [0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]],
    # FasterDecoding Medusa's default 63-node tree (depth 4), tuned on Vicuna-7B; exact copy.
    "mc_sim_7b_63": _load_json_paths(TREES_DIR / "mc_sim_7b_63.json"),
}


def validate_choices(choices, num_heads: int | None = None, source: str = "tree",
                     vocab_size: int | None = None) -> list[list[int]]:
    """Check a list of paths and return it as a list of lists of python ints.

    Raises TreeError naming `source` (preset name or file) and the offending path when a path
    is empty, holds a non-int or negative entry, is duplicated, lacks one of its prefixes, or
    when the tree is deeper than `num_heads` (each depth is proposed by one head), has more than
    MAX_NODES paths, or an entry beyond MAX_RANK or beyond the `vocab_size` candidates a head
    can rank (the heads' vocabulary, when known).
    """
    if not isinstance(choices, (list, tuple)) or len(choices) == 0:
        raise TreeError(f"{source}: expected a non-empty list of paths, got {choices!r:.80}")
    if len(choices) > MAX_NODES:
        raise TreeError(f"{source}: {len(choices)} paths, over the limit of {MAX_NODES} nodes per tree")
    limit = MAX_RANK if vocab_size is None else min(MAX_RANK, int(vocab_size) - 1)
    paths = []
    for p in choices:
        if not isinstance(p, (list, tuple)) or len(p) == 0:
            raise TreeError(f"{source}: every path must be a non-empty list of ints, got {p!r:.80}")
        for c in p:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0:
                raise TreeError(f"{source}: path {list(p)!r:.80} has entry {c!r:.40}; "
                                 "entries must be non-negative ints")
            if c > limit:
                raise TreeError(f"{source}: path {list(p)!r:.80} has rank {c}, beyond the {limit + 1} candidates a head "
                                f"proposes ({_why(limit, vocab_size)}): use ranks 0..{limit}")
        paths.append([int(c) for c in p])
    seen = set()
    for p in paths:
        if tuple(p) in seen:
            raise TreeError(f"{source}: duplicate path {p}")
        seen.add(tuple(p))
    for p in paths:
        for k in range(1, len(p)):
            if tuple(p[:k]) not in seen:
                raise TreeError(f"{source}: path {p} has no parent; its prefix {p[:k]} "
                                 "is not in the tree")
    depth = max(len(p) for p in paths)
    if num_heads is not None and depth > num_heads:
        raise TreeError(f"{source}: tree depth {depth} exceeds the number of Medusa heads "
                         f"{num_heads} (each depth needs one head)")
    return paths


def _why(limit, vocab_size) -> str:
    return f"the heads rank a vocabulary of {vocab_size} tokens" if vocab_size is not None and limit < MAX_RANK \
        else f"MAX_RANK = {MAX_RANK}"


def load_choices(spec, num_heads: int | None = None, vocab_size: int | None = None) -> list[list[int]]:
    """Resolve a tree spec to a validated list of paths.

    spec: a preset name (see PRESETS), "chain" (top-1 chain of depth num_heads; num_heads
    required), a path to a JSON file holding a list of paths, or a list of paths itself.
    vocab_size: the candidates a head ranks (its vocabulary), when known: no entry may reach it.
    """
    if isinstance(spec, (list, tuple)):
        return validate_choices(spec, num_heads, "medusa_choices", vocab_size)
    spec = str(spec)
    if spec == "chain":
        if num_heads is None:
            raise TreeError("tree 'chain' needs num_heads (its depth is the head count)")
        return chain_tree(num_heads)
    if spec in PRESETS:
        return validate_choices(PRESETS[spec], num_heads, f"tree preset '{spec}'", vocab_size)
    path = Path(spec)
    if path.is_file():
        return validate_choices(_load_json_paths(path), num_heads, f"tree file {path}", vocab_size)
    raise TreeError(f"unknown tree '{spec}': not a preset ({', '.join(['chain', *PRESETS])}) "
                     "and not an existing JSON file")


# `--medusa_choices auto`: the tree `python -m medusa tune` saved beside the heads for this kind
# of device, else this preset (cheap trees on a CPU, where every node costs compute; on a GPU a
# 64-node tree costs about what a 9-node one does: docs/gpu.md)
AUTO = "auto"
AUTO_FALLBACK = {"cpu": "8_node", "cuda": "mc_sim_7b_63"}


def tuned_tree_path(heads_path, device) -> Path:
    """Where the tuner saves, and `auto` looks for, the tree of heads file `heads_path`."""
    heads_path = Path(heads_path)
    return heads_path.with_name(f"{heads_path.stem}_tree_{device}.json")


def resolve_auto(heads_path, device) -> str:
    """The spec `auto` stands for: the tuned tree file beside the heads, else the fallback preset."""
    tuned = tuned_tree_path(heads_path, device)
    return str(tuned) if tuned.is_file() else AUTO_FALLBACK[device]


def check_spec(spec) -> None:
    """Check all of a tree spec that does not depend on the heads (name, file, paths); the
    depth is checked by load_choices once the head count is known."""
    if spec not in ("chain", AUTO):
        load_choices(spec)


@dataclass(frozen=True, eq=False)
class TreeBuffers:
    """Everything tree decoding needs, for N = len(choices) + 1 nodes (node 0 = root).

    Nodes are numbered root first, then paths sorted by (len, path). P = number of leaves.
    choices:          sorted paths; node i (i >= 1) is choices[i - 1]
    depth:            longest path length (= number of heads used)
    topk:             topk[d] = candidates head d must propose (1 + max index at depth d)
    attn_mask:        [N, N] bool, attn_mask[i, j] iff j is i or an ancestor of i
    tree_indices:     [N] int64, node -> index into the flat candidate vector
                      concat([root_token], head0_topk[:topk[0]], head1_topk[:topk[1]], ...);
                      node with path p (depth d = len(p)) -> 1 + sum(topk[:d-1]) + p[-1]
    position_ids:     [N] int64, depth of each node (root 0); add the sequence length
    parent:           [N] int64, parent node (root -1)
    nodes_at_depth:   depth + 1 arrays; nodes_at_depth[d] = node ids at depth d ([0] for d=0)
    retrieve_indices: [P, depth + 1] int64, root-to-leaf node ids per leaf, -1 padded right;
                      rows ordered by leaf node id (so shorter paths come first)
    path_lengths:     [P] int64, valid entries of each row (root included)
    valid_mask:       [P, depth + 1] bool, retrieve_indices >= 0
    children:         children[n] = child node ids of node n, in rank order
    ancestry:         ancestry[n] = node ids root..n
    rank:             [N] int64, rank of each node among its siblings (its path's last entry; root 0)
    candidate_slots:  [sum(topk)] int64, where each flat candidate after the root sits in the
                      heads' top-k flattened from [depth, max(topk)]: d * max(topk) + j

    The -1 padding is NOT a node: indexing with it wraps to the last node. A decoder must stop
    acceptance at path_lengths (or mask with valid_mask) so a padded slot is never accepted.
    """
    choices: tuple
    depth: int
    topk: tuple
    attn_mask: np.ndarray
    tree_indices: np.ndarray
    position_ids: np.ndarray
    parent: np.ndarray
    nodes_at_depth: tuple
    retrieve_indices: np.ndarray
    path_lengths: np.ndarray
    valid_mask: np.ndarray
    children: tuple
    ancestry: tuple
    rank: np.ndarray
    candidate_slots: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.choices) + 1

    @property
    def path_rows(self) -> np.ndarray:
        """retrieve_indices with the padding pointing at the root, for gathers: [P, depth + 1];
        mask with valid_mask."""
        return np.where(self.valid_mask, self.retrieve_indices, 0)

    @property
    def num_candidates(self) -> int:
        """Length of the flat candidate vector tree_indices points into (1 + sum(topk))."""
        return 1 + sum(self.topk)


def build_tree_buffers(choices) -> TreeBuffers:
    """Build the TreeBuffers of a list of paths (validated here; order does not matter)."""
    paths = sorted(validate_choices(choices), key=lambda p: (len(p), p))
    n = len(paths) + 1
    depth = max(len(p) for p in paths)
    node_of = {(): 0, **{tuple(p): i + 1 for i, p in enumerate(paths)}}
    topk = tuple(1 + max(p[d] for p in paths if len(p) > d) for d in range(depth))
    offsets = np.concatenate([[1], 1 + np.cumsum(topk)])  # flat start of each head's block

    parent = np.array([-1] + [node_of[tuple(p[:-1])] for p in paths], dtype=np.int64)
    position_ids = np.array([0] + [len(p) for p in paths], dtype=np.int64)
    tree_indices = np.array([0] + [offsets[len(p) - 1] + p[-1] for p in paths], dtype=np.int64)

    # Ancestors of each node, root first; a parent always precedes its child after sorting.
    chains = [[0]]
    for i in range(1, n):
        chains.append(chains[parent[i]] + [i])
    children = [[] for _ in range(n)]
    for i in range(1, n):
        children[parent[i]].append(i)                     # nodes are sorted by path, so by rank
    attn_mask = np.zeros((n, n), dtype=bool)
    for i, chain in enumerate(chains):
        attn_mask[i, chain] = True

    leaves = [i for i in range(n) if not children[i]]
    retrieve = np.full((len(leaves), depth + 1), -1, dtype=np.int64)
    for row, leaf in enumerate(leaves):
        retrieve[row, :len(chains[leaf])] = chains[leaf]
    path_lengths = np.array([len(chains[leaf]) for leaf in leaves], dtype=np.int64)
    slots = [d * max(topk) + j for d, k in enumerate(topk) for j in range(k)]

    return TreeBuffers(
        choices=tuple(tuple(p) for p in paths), depth=depth, topk=topk,
        attn_mask=attn_mask, tree_indices=tree_indices, position_ids=position_ids,
        parent=parent,
        nodes_at_depth=tuple(np.flatnonzero(position_ids == d) for d in range(depth + 1)),
        retrieve_indices=retrieve, path_lengths=path_lengths, valid_mask=retrieve >= 0,
        children=tuple(tuple(c) for c in children), ancestry=tuple(tuple(c) for c in chains),
        rank=np.array([0] + [p[-1] for p in paths], dtype=np.int64),
        candidate_slots=np.array(slots, dtype=np.int64),
    )
