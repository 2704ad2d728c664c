"""Run under a launcher: train, then let every rank save the parameters it holds.

(Parameters, not buffers: DDP hands rank 0's batch-norm statistics to the others at the
start of every forward, and each rank then updates its own copy.)"""

import sys

import torch

from piunet_dist.core.config_load import load_config
from piunet_dist.training.trainer import Trainer

if __name__ == "__main__":
    cfg = load_config(sys.argv[1], sys.argv[2:])
    trainer = Trainer(cfg)
    trainer.train()
    model = trainer.acc.unwrap_model(trainer.model)
    torch.save(
        {k: v.detach().cpu() for k, v in model.named_parameters()}, f"{cfg.run_dir}/rank{trainer.acc.process_index}.pt"
    )
