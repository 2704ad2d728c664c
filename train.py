"""Entry for `accelerate launch train.py --config FILE [section.key=value ...]` (and torchrun, srun)."""

import sys

from piunet_dist.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
