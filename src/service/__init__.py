"""lab2prod: take a PyTorch model from a JupyterLab notebook to a production /predict endpoint."""

__version__ = "0.1.0"
