-- Promote: skip the remaining steps of the current run to its promote step
-- (annotation promote = "<run>"), unpausing it, as `kubectl canary promote` does.
local status = obj.status or {}
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["canary-operator.dev/promote"] = tostring(status.run or 1)
if obj.spec.paused == true then
  obj.spec.paused = false
end
return obj
