import os
import sys
from pathlib import Path

import torch

# the oracles (reference_piunet.py, oracles.py) are plain modules beside the tests
sys.path.insert(0, str(Path(__file__).parent))

# two cores: keep a test's tensor ops from fighting the other processes it starts
torch.set_num_threads(min(2, torch.get_num_threads()))

# without a GPU the Triton kernels run in Triton's interpreter, on the CPU
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
