"""``python -m tuneforge`` (and ``torchrun --nproc_per_node=N -m tuneforge train ...``): the command line."""
import sys

from tuneforge.cli import main

sys.exit(main())
