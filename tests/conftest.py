import sys
from pathlib import Path

import torch

# the oracles (reference_piunet.py, oracles.py) are plain modules beside the tests
sys.path.insert(0, str(Path(__file__).parent))

# two cores: keep a test's tensor ops from fighting the other processes it starts
torch.set_num_threads(min(2, torch.get_num_threads()))
