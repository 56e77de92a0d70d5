"""canary-operator: canary rollouts with a guaranteed cleanup and a per-target lock."""

__version__ = "0.1.0"

# Before kopf or any module of ours imports the Kubernetes client: its packages would
# import every generated API and model class (see kube/slim.py).
from canary_operator.kube import slim as _slim

_slim.install()
