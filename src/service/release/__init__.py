"""Release: papermill runs of the notebooks, the serving checks, the gate, and publishing."""
