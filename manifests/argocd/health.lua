-- Argo CD health check for canary-operator.dev/CanaryRollout.
-- Generation-aware: until the operator has acted on the current spec, the
-- rollout is Progressing, whatever phase the previous spec ended in.
local hs = {}
local status = obj.status
local generation = (obj.metadata and obj.metadata.generation) or 1

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick the rollout up"
  return hs
end

local observed = status.observedGeneration or 0
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.observedGeneration ~= nil and c.observedGeneration > observed then
      observed = c.observedGeneration
    end
  end
end
if observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local phase = status.phase
local message = status.message or phase
local annotations = (obj.metadata and obj.metadata.annotations) or {}
local retry = annotations["canary-operator.dev/retry"]
local terminal = phase == "Succeeded" or phase == "Failed" or phase == "Aborted"
  or phase == "Superseded"
if terminal and retry ~= nil and string.match(retry, "^%d+$") ~= nil
    and retry ~= tostring(status.run or 0) then
  hs.status = "Progressing"
  hs.message = "Retry requested: run " .. retry .. " is starting"
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Superseded" then
  -- A newer rollout of the same target replaced this one before it started.
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Aborted" then
  hs.status = "Degraded"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "CleaningUp" and status.cleanup ~= nil and status.cleanup.lastError ~= nil then
  -- A blocked cleanup keeps the target's lock and retries: a human may be needed.
  hs.status = "Degraded"
elseif phase == "Pending" or phase == "Queued" or phase == "Progressing"
    or phase == "CleaningUp" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
end
hs.message = message
return hs
