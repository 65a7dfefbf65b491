"""Entry point for the launchers: `deepspeed cli/train.py --ds ds_configs/zero2.json --llm … --shards …`
(also `torchrun cli/train.py …` and plain `python cli/train.py …`). Same flags as `r2g train`."""

import sys

from r2g.cli import app, main

if __name__ == "__main__":
    sys.argv.insert(1, "train")
    main()
