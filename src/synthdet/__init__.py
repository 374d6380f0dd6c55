"""synthdet: synthetic object-detection data from a few labelled real images."""

import os

# The pipeline runs offline: MLflow would otherwise try to send usage telemetry from every stage.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Before any module imports torch: one set of math kernels on every x86-64 CPU
# (synthdet.core.kernels).
from synthdet.core import kernels

kernels.pin()

__version__ = "0.1.0"
