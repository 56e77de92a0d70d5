-- Abort: spec.abort = true; the operator records Aborted and runs the cleanup.
obj.spec.abort = true
return obj
