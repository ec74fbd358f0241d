"""Labelling a lab's subjects with trained models: ``python -m autolabel.predict`` (autolabel/predict/command.py)."""
