"""Train mixture-of-experts heads for a frozen base model; all flags: `python train_moe.py --help`.

    python train_moe.py                                   # embedded SmolLM2, the shipped medusa/trained/smollm2_selfdistill.jsonl
    mpirun -np 2 python train_moe.py --batch_size 4       # Jittor MPI data parallel

The same as `medusa train --head_family moe` (medusa/cli/train.py, medusa/training/trainer.py).
"""
from medusa import cli
from medusa.cli.train import main

if __name__ == "__main__":
    cli.start(lambda argv: main(argv, family="moe"))
