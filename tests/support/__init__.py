"""The one support package of the tests: helpers every test directory imports as ``support``
(``pythonpath = ["tests"]`` in pyproject.toml). One job per module:

- ``models``: test models, trained the one way the package trains, and digits to ask them about
- ``registry``: publishing a checkpoint as a registry version
- ``app``: test settings and the real app called in-process
- ``uploads``: images as users upload them
- ``servers``: real processes on free ports (redis-server, ``lab2prod serve``/``worker``)
- ``rawhttp``: HTTP/1.1 by hand over a socket, for misbehaving clients (trickling, stalled)
- ``mlflow_server``: a real ``mlflow server`` (temporary SQLite store and artefact folder)
- ``releases``: ``lab2prod release`` and other commands run in a project folder, tiny parameters
- ``rabbitmq``: the shared RabbitMQ: reachability, a queue per test, its counts and cleanup
- ``docker``: reading the Dockerfile's instructions and stages, and what .dockerignore sends
- ``deploy``: the deploy files as Compose and kustomize render them, and what the lab2prod
  commands in them would do (CLI parse, settings, the port bound)

Fixtures built on these live in the conftest.py files.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
