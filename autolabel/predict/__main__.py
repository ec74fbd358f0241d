"""``python -m autolabel.predict``: the command is autolabel/predict/command.py."""

import sys

from autolabel.predict.command import main

sys.exit(main())
