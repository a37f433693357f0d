"""Train recurrent (Hydra-style) heads for a frozen base model; all flags: `python train_rnn.py --help`.

    python train_rnn.py                                   # embedded SmolLM2, the shipped medusa/trained/smollm2_selfdistill.jsonl
    mpirun -np 2 python train_rnn.py --batch_size 4       # Jittor MPI data parallel

The trainer is medusa/training.py (shared by train_ddp.py, train_rnn.py and train_moe.py).
"""
from medusa import cli
from medusa.training import main

if __name__ == "__main__":
    cli.run(lambda argv: main(argv, family="rnn"))
