"""synthdet: synthetic object-detection data from a few labelled real images."""

import os

# The pipeline runs offline: MLflow would otherwise try to send usage telemetry from every stage.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.1.0"
