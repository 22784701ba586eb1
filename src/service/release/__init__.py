"""Release: papermill runs, the gate, and the versioned model registry."""
