"""`python -m piunet_dist.launch`: jobs pickle TrainJob by reference to piunet_dist.launch.jobs."""

import sys

from .cli import main

sys.exit(main())
