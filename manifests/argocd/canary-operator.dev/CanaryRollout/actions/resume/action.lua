-- Resume: clear spec.paused and, when the current step is a pause without a
-- duration, release it for this run only (annotation resume = "<step>@<run>",
-- step 1-based), as `kubectl canary resume` does.
if obj.spec.paused == true then
  obj.spec.paused = false
end
local status = obj.status or {}
local index = status.currentStep
local steps = obj.spec.steps or {}
local function indefinite(item)
  return item.pause ~= nil and (item.pause.duration == nil or item.pause.duration == "")
end
local step = nil
if index ~= nil then
  step = steps[index + 1]
end
if step ~= nil then
  local waiting = indefinite(step)
  for _, item in ipairs(step.parallel or {}) do
    waiting = waiting or indefinite(item)
  end
  if waiting then
    if obj.metadata.annotations == nil then
      obj.metadata.annotations = {}
    end
    obj.metadata.annotations["canary-operator.dev/resume"] =
      tostring(index + 1) .. "@" .. tostring(status.run or 1)
  end
end
return obj
