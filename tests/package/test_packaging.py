"""The package as a wheel carries what the default commands load (heads, data, prompts, trees):
built from the tracked files, installed outside the checkout, then the default benchmark's
loading path runs from there."""
import os
import shutil
import subprocess
import sys
import zipfile

from support import ROOT

LOAD_DEFAULTS = """
from pathlib import Path
from medusa.heads import io as head_io
from medusa.training import args as training
from medusa.data.prompt_sets import DEFAULT_PROMPTS, load_prompt_set
from medusa.decoding.tree import load_choices
site = Path(head_io.__file__).resolve().parents[1]   # the installed medusa/
assert "site" in str(site), site
assert head_io.DEFAULT_HEADS.resolve().parent.parent == site
heads = head_io.load_heads(head_io.DEFAULT_HEADS)
print("heads", heads.config.num_heads, len(load_prompt_set(DEFAULT_PROMPTS)), len(load_choices("mc_sim_7b_63")))
assert training.SHIPPED_DATA.is_file()
"""


def test_wheel_holds_the_shipped_files_and_loads_them_when_installed(tmp_path):
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("medusa_jittor-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("medusa/trained/smollm2_medusa.jtr", "medusa/trained/smollm2_medusa_config.json",
                    "medusa/trained/smollm2_rnn.jtr", "medusa/trained/smollm2_selfdistill.jsonl",
                    "medusa/trained/draft_vocab.json",
                    "medusa/prompts/bench_prompts.jsonl", "medusa/trees/mc_sim_7b_63.json"):
        assert shipped in names, shipped
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")   # ahead of the editable install of the checkout
    out = subprocess.run([sys.executable, "-c", LOAD_DEFAULTS], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[:2] == ["heads", "4"]
