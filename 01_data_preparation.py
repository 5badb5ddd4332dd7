"""The seed's data-preparation script: TinyStories from the hub -> data/processed_datasets (GPT-2 ids).

A thin wrapper over `tinygemma prepare` with the seed's defaults; any of its options
can be added, e.g. `python 01_data_preparation.py --source builtin` offline.
"""

import sys

from tinygemma.cli import main
from tinygemma.config import DATA_DIR

if __name__ == "__main__":
    sys.exit(main(["prepare", "--source", "hf:roneneldan/TinyStories", "--tokenizer", "gpt2",
                   "--out", DATA_DIR, *sys.argv[1:]]))
