"""``python -m autolabel CELL_DIR ...`` is the same as ``python -m autolabel.train CELL_DIR ...``."""

import sys

from autolabel.train import main

sys.exit(main())
