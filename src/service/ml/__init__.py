"""Shared by the notebooks, the release pipeline and serving: one model, one preprocessing."""

import os

# PyTorch's OpenMP threads spin while they wait for work. On a shared CPU (CI, a laptop that
# also runs a server, two notebooks) spinning threads take the cores the busy thread needs and
# CPU training slows down five-fold or more; passive waiting avoids that. libgomp reads this
# when torch loads, so it is set here, before any module of this package imports torch, and
# only when the user has not chosen a policy. It is a knob for libgomp, not for our code, so
# it is not a Settings field.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
