"""The MNIST CNN lab's core: models, the training engine, the run store, the CLI and execution (no Streamlit)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the folder holding core/ and dashboard/
