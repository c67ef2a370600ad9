#!/usr/bin/env python
"""Train a byte-level GPT with FIM metrics logging; every TrainConfig/GPTConfig field is a flag.

    python scripts/train.py --max_steps 2000 --attn ra --out_dir runs/ra
    torchrun --nproc_per_node=2 scripts/train.py --max_steps 2000 --out_dir runs/ddp
    python scripts/train.py --out_dir runs/ra --resume
"""
import sys

from fim_attention.training import train_main

if __name__ == "__main__":
    sys.exit(train_main())
