"""Tree presets, loading/validation and tree buffers (pure numpy, no model)."""
import json

import numpy as np
import pytest

from medusa.decoding.tree import PRESETS, build_tree_buffers, chain_tree, load_choices, validate_choices

ALL_TREES = {**PRESETS, "chain_1": chain_tree(1), "chain_5": chain_tree(5)}


def _mask_from_rows(rows):
    """Bool [N, N] mask from a list of 'attended node ids' per row."""
    m = np.zeros((len(rows), len(rows)), dtype=bool)
    for i, cols in enumerate(rows):
        m[i, cols] = True
    return m


def test_chain_of_3_by_hand():
    assert chain_tree(3) == [[0], [0, 0], [0, 0, 0]]
    b = build_tree_buffers(chain_tree(3))
    assert b.num_nodes == 4 and b.depth == 3 and b.topk == (1, 1, 1)
    np.testing.assert_array_equal(b.attn_mask, np.tril(np.ones((4, 4), dtype=bool)))
    np.testing.assert_array_equal(b.tree_indices, [0, 1, 2, 3])
    np.testing.assert_array_equal(b.position_ids, [0, 1, 2, 3])
    np.testing.assert_array_equal(b.parent, [-1, 0, 1, 2])
    np.testing.assert_array_equal(b.retrieve_indices, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(b.path_lengths, [4])
    assert b.valid_mask.all()


def test_8_node_by_hand():
    # Sorted by (len, path): 1=[0] 2=[1] 3=[0,0] 4=[0,1] 5=[1,0] 6=[0,0,0] 7=[1,0,0] 8=[0,0,0,0]
    b = build_tree_buffers(PRESETS["8_node"])
    assert b.choices[:3] == ((0,), (1,), (0, 0))
    assert b.num_nodes == 9 and b.depth == 4
    assert b.topk == (2, 2, 1, 1) and b.num_candidates == 7
    # flat candidates: [root, h0[0], h0[1], h1[0], h1[1], h2[0], h3[0]]
    np.testing.assert_array_equal(b.tree_indices, [0, 1, 2, 3, 4, 3, 5, 5, 6])
    np.testing.assert_array_equal(b.position_ids, [0, 1, 1, 2, 2, 2, 3, 3, 4])
    np.testing.assert_array_equal(b.parent, [-1, 0, 0, 1, 1, 2, 3, 5, 6])
    expected_mask = _mask_from_rows([
        [0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 4], [0, 2, 5],
        [0, 1, 3, 6], [0, 2, 5, 7], [0, 1, 3, 6, 8]])
    np.testing.assert_array_equal(b.attn_mask, expected_mask)
    # leaves 4=[0,1], 7=[1,0,0], 8=[0,0,0,0], in node order
    np.testing.assert_array_equal(b.retrieve_indices, [
        [0, 1, 4, -1, -1],
        [0, 2, 5, 7, -1],
        [0, 1, 3, 6, 8]])
    np.testing.assert_array_equal(b.path_lengths, [3, 4, 5])
    np.testing.assert_array_equal(b.valid_mask, b.retrieve_indices >= 0)
    assert [a.tolist() for a in b.nodes_at_depth] == [[0], [1, 2], [3, 4, 5], [6, 7], [8]]
    assert b.children == ((1, 2), (3, 4), (5,), (6,), (), (7,), (8,), (), ())
    assert b.ancestry[8] == (0, 1, 3, 6, 8) and b.ancestry[5] == (0, 2, 5)
    np.testing.assert_array_equal(b.rank, [0, 0, 1, 0, 1, 0, 0, 0, 0])
    # [h0[0], h0[1], h1[0], h1[1], h2[0], h3[0]] in the heads' [4, 2] top-k, flattened
    np.testing.assert_array_equal(b.candidate_slots, [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(b.path_rows, [[0, 1, 4, 0, 0], [0, 2, 5, 7, 0], [0, 1, 3, 6, 8]])


def test_mc_sim_7b_63_matches_upstream_shape():
    choices = PRESETS["mc_sim_7b_63"]
    assert len(choices) == 63
    assert choices[:5] == [[0], [0, 0], [1], [0, 1], [2]] and choices[-1] == [0, 7, 0]
    b = build_tree_buffers(choices)
    assert b.num_nodes == 64 and b.depth == 4
    assert b.topk == (10, 10, 10, 2)
    assert b.retrieve_indices.shape == (42, 5)


@pytest.mark.parametrize("name", sorted(ALL_TREES))
def test_invariants(name):
    choices = ALL_TREES[name]
    b = build_tree_buffers(choices)
    n = len(choices) + 1
    assert b.num_nodes == n and b.attn_mask.shape == (n, n)
    # parents precede children, so the mask is lower-triangular with a true diagonal
    assert not np.triu(b.attn_mask, 1).any() and b.attn_mask.diagonal().all()
    assert b.attn_mask[:, 0].all()
    # position = path length; parent is the path minus its last entry
    assert b.position_ids.tolist() == [0] + [len(p) for p in b.choices]
    for i, p in enumerate(b.choices, start=1):
        assert b.parent[i] == (0 if len(p) == 1 else b.choices.index(p[:-1]) + 1)
        assert b.attn_mask[i].sum() == len(p) + 1
    # each retrieve row is a root-to-leaf chain of parents, padded with -1 after path_lengths
    assert b.retrieve_indices.shape[1] == b.depth + 1
    for row, length in zip(b.retrieve_indices, b.path_lengths):
        assert row[0] == 0 and (row[length:] == -1).all() and (row[:length] >= 0).all()
        for k in range(1, length):
            assert b.parent[row[k]] == row[k - 1]
        assert not (b.parent == row[length - 1]).any()  # ends at a leaf
    np.testing.assert_array_equal(b.valid_mask, b.retrieve_indices >= 0)
    assert set(b.retrieve_indices[b.valid_mask].tolist()) == set(range(n))
    # tree_indices: inside the flat candidate vector; same slot iff same (depth, last index)
    assert b.tree_indices[0] == 0 and (b.tree_indices[1:] >= 1).all()
    assert (b.tree_indices < b.num_candidates).all()
    slots = {(len(p), p[-1]): t for p, t in zip(b.choices, b.tree_indices[1:])}
    assert len(set(slots.values())) == len(slots)
    for p, t in zip(b.choices, b.tree_indices[1:]):
        assert t == 1 + sum(b.topk[:len(p) - 1]) + p[-1] and p[-1] < b.topk[len(p) - 1]
    assert sum(len(a) for a in b.nodes_at_depth) == n
    # children / ancestry / rank: the parent table read the other way, in rank order
    for node in range(n):
        assert list(b.children[node]) == [c for c in range(1, n) if b.parent[c] == node]
        assert b.ancestry[node][-1] == node and len(b.ancestry[node]) == b.position_ids[node] + 1
        assert [b.rank[c] for c in b.children[node]] == sorted(b.rank[c] for c in b.children[node])
    # candidate_slots: flat candidate j (after the root) -> its (head, rank) in the [depth, max(topk)] top-k
    kmax = max(b.topk)
    assert [divmod(int(s), kmax) for s in b.candidate_slots] == [(d, j) for d, k in enumerate(b.topk) for j in range(k)]


def test_input_order_does_not_matter():
    a = build_tree_buffers(PRESETS["16_node"])
    b = build_tree_buffers(list(reversed(PRESETS["16_node"])))
    for field in ("attn_mask", "tree_indices", "position_ids", "retrieve_indices", "parent"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_load_presets_and_chain():
    assert load_choices("8_node") == PRESETS["8_node"]
    assert load_choices("mc_sim_7b_63", num_heads=4) == PRESETS["mc_sim_7b_63"]
    assert load_choices("chain", num_heads=5) == chain_tree(5)
    assert load_choices([[0], (0, np.int64(1))]) == [[0], [0, 1]]
    with pytest.raises(ValueError, match="num_heads"):
        load_choices("chain")


def test_json_round_trip(tmp_path):
    path = tmp_path / "my_tree.json"
    path.write_text(json.dumps(PRESETS["16_node"]))
    loaded = load_choices(str(path), num_heads=4)
    assert loaded == PRESETS["16_node"]
    np.testing.assert_array_equal(build_tree_buffers(loaded).attn_mask,
                                  build_tree_buffers(PRESETS["16_node"]).attn_mask)


@pytest.mark.parametrize("choices, match", [
    ([[0], [0, 0], [1, 0]], r"path \[1, 0\] has no parent; its prefix \[1\]"),
    ([[0], [0, -1]], r"path \[0, -1\] has entry -1"),
    ([[0], [1.0]], r"entries must be non-negative ints"),
    ([[0], [True]], r"entries must be non-negative ints"),
    ([[0], []], r"non-empty"),
    ([], r"non-empty list of paths"),
    ([[0], [0, 0], [0]], r"duplicate path \[0\]"),
])
def test_invalid_trees(choices, match):
    with pytest.raises(ValueError, match=match):
        validate_choices(choices)
    with pytest.raises(ValueError, match=match):
        build_tree_buffers(choices)


def test_depth_exceeds_heads():
    with pytest.raises(ValueError, match="tree depth 4 exceeds the number of Medusa heads 3"):
        load_choices("8_node", num_heads=3)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown tree 'no_such_tree'.*8_node"):
        load_choices("no_such_tree")


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("[[0], [0, 0")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_choices(str(bad))
    orphan = tmp_path / "orphan.json"
    orphan.write_text("[[0], [2, 0]]")
    with pytest.raises(ValueError, match=r"orphan.json: path \[2, 0\] has no parent"):
        load_choices(str(orphan))
    not_list = tmp_path / "dict.json"
    not_list.write_text('{"tree": [[0]]}')
    with pytest.raises(ValueError, match="dict.json: expected a non-empty list"):
        load_choices(str(not_list))
