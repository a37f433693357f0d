"""`medusa step-profile`: the device loop's step stage by stage (bench/step_profile.py), on the CPU."""
import json

from medusa.bench.step_profile import STAGES
from medusa.cli import step_profile as command


def test_step_profile_of_random_heads_on_a_tiny_shape(tmp_path, capsys):
    out = tmp_path / "profile.json"
    command.main(["--device", "cpu", "--shape", "tiny", "--families", "medusa", "rnn", "--trees", "chain", "8_node",
                  "--context", "20", "--repeats", "2", "--warmup", "1", "--output", str(out)])
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert [(r["family"], r["tree"]) for r in result["runs"]] == [
        ("medusa", "chain"), ("medusa", "8_node"), ("rnn", "chain"), ("rnn", "8_node")]
    for r in result["runs"]:
        assert set(r["stages"]) == set(STAGES)
        assert all(s["ms"] > 0 and s["ms"] >= s["run_ms"] for s in r["stages"].values())
        assert r["step_ms"] > 0 and r["decode_ms"] > 0 and r["nodes"] == {"chain": 5, "8_node": 9}[r["tree"]]
        # the stages are the step's own functions: the same accepted path as the whole step
        assert r["accepted"] == r["accepted_whole_step"] and len(r["accepted"]) == 2
    assert result["environment"]["options"]["exact"] == "decode" and result["exact"] == "off"   # (CPU)
    assert "step" in capsys.readouterr().out
