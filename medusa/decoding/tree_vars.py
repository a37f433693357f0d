"""A tree's tables as Jittor vars, built once per (tree spec, head count): what tree decoding
feeds the base model (the tree's attention block and positions) and which nodes it scores.

The tables are computed once, in numpy, by tree.build_tree_buffers (TreeBuffers); this module
only copies the ones steps.tree_decode reads onto the device. The device loop's own index
tables are in device_loop.py. Reference: FasterDecoding/Medusa keeps its `medusa_buffers`
(generate_medusa_buffers, medusa/model/utils.py) on the model's device the same way.
"""
import functools
from dataclasses import dataclass

import numpy as np

from medusa.decoding.tree import TreeBuffers, build_tree_buffers, load_choices
from medusa.model.transformer import NEG_INF
from medusa.runtime.backend import jt


def device_ints(a):
    """An index table on the device: int32, no gradient."""
    return jt.array(np.ascontiguousarray(a, dtype=np.int32)).stop_grad()


@dataclass(frozen=True)
class Scoring:
    """A set of nodes whose base logits tree_decode computes, and where each one's row is."""
    nodes: np.ndarray           # [M] scored node ids, ascending
    slot: np.ndarray            # [N] row of each node in the scored logits, -1 = not scored
    nodes_var: object           # jt [M] int32
    parent_slot_var: object     # jt [N - 1] int32 scored row of the parent of nodes 1..N-1

    @classmethod
    def of(cls, buf: TreeBuffers, nodes) -> "Scoring":
        slot = np.full(buf.num_nodes, -1, dtype=np.int64)
        slot[nodes] = np.arange(len(nodes))
        return cls(nodes=nodes, slot=slot, nodes_var=device_ints(nodes),
                   parent_slot_var=device_ints(slot[buf.parent[1:]]))


@dataclass(frozen=True, eq=False)
class Tree:
    """TreeBuffers plus their Jittor copies that every step reads."""
    buffers: TreeBuffers
    mask_block: object          # jt [1, 1, N, N] additive tree mask
    positions: object           # jt [1, N] int32 node depths
    all_nodes: Scoring          # every node scored (GPU)
    internal: Scoring           # only nodes with children scored (CPU), see scored()

    @property
    def num_nodes(self) -> int:
        return self.buffers.num_nodes

    def mask(self, past_len):
        """Additive mask [1, 1, N, past_len + N]: every cached position plus the tree block."""
        if past_len == 0:
            return self.mask_block
        return jt.concat([jt.zeros((1, 1, self.num_nodes, past_len), "float32"), self.mask_block], dim=3)

    def scored(self, leaves: bool) -> Scoring:
        """The nodes whose base logits tree_decode computes: all, or (leaves=False) only those
        with children, whose logits verify the children; a leaf's logits are needed only for
        the bonus token when the whole path to it is accepted (computed then, one row)."""
        return self.all_nodes if leaves else self.internal


def _spec_key(choices):
    if isinstance(choices, (list, tuple)):
        return tuple(tuple(int(c) for c in p) for p in choices)
    return str(choices)


@functools.lru_cache(maxsize=32)
def _tree_for(key, num_heads) -> Tree:
    spec = [list(p) for p in key] if isinstance(key, tuple) else key
    buf = build_tree_buffers(load_choices(spec, num_heads))
    block = np.where(buf.attn_mask, 0.0, NEG_INF).astype(np.float32)[None, None]
    internal = np.array([node for node in range(buf.num_nodes) if buf.children[node]], dtype=np.int64)
    return Tree(buffers=buf, mask_block=jt.array(block).stop_grad(), positions=device_ints(buf.position_ids[None]),
                all_nodes=Scoring.of(buf, np.arange(buf.num_nodes)), internal=Scoring.of(buf, internal))


def resolve_tree(choices, num_heads) -> Tree:
    """The (cached) Tree of a preset name, JSON file path or list of paths."""
    return _tree_for(_spec_key(choices), int(num_heads))
