"""Convert checkpoints for medusa-jittor: `python weight_convert.py --help` (the same as `medusa convert`).

    python weight_convert.py --base_model_path SRC --output DIR/model.pkl [--dtype float16|float32]
    python weight_convert.py --medusa_weights medusa_lm_head.pt --output heads.jtr [--base_model_path SRC]
    python weight_convert.py                      # the embedded default model, into the cache folder
"""
from medusa import cli
from medusa.cli.convert import main

if __name__ == "__main__":
    cli.start(main)
