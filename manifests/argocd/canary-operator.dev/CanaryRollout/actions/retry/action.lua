-- Retry: a new run of an ended rollout (annotation retry = "<run + 1>"). A stale
-- resume annotation is removed (it names a step, and would release the new run's
-- pause), and a previous abort is cleared, as `kubectl canary retry` does.
local status = obj.status or {}
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["canary-operator.dev/retry"] = tostring((status.run or 0) + 1)
obj.metadata.annotations["canary-operator.dev/resume"] = nil
if obj.spec.abort == true then
  obj.spec.abort = false
end
return obj
