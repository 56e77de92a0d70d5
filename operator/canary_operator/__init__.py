"""canary-operator: canary rollouts with a guaranteed cleanup and a per-target lock."""

__version__ = "0.1.0"
