"""One reconcile of one rollout, one concern per module, all on one ReconcileContext
(context.py): reconciler.py is the entry (observe -> plan -> act -> write status)."""
