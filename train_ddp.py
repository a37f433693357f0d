"""Train Medusa-1 heads (ResBlocks + vocab projection) for a frozen base model; all flags: `python train_ddp.py --help`.

    python train_ddp.py                                   # embedded SmolLM2, the shipped medusa/trained/smollm2_selfdistill.jsonl
    mpirun -np 2 python train_ddp.py --batch_size 4       # Jittor MPI data parallel

The same as `medusa train --head_family medusa` (medusa/cli/train.py, medusa/training/trainer.py).
"""
from medusa import cli
from medusa.cli.train import main

if __name__ == "__main__":
    cli.start(lambda argv: main(argv, family="medusa"))
