-- Argo CD health check for canary-operator.dev/CanaryRollout.
-- Runs in Argo CD's sandbox for argocd-cm scripts: base, table and a safe os only
-- (no string or math library), so it uses nothing but the base functions.
-- Generation-aware: until the operator has acted on the current spec (or started a
-- requested retry), the rollout is Progressing, whatever the previous run's result.
local hs = {}
local status = obj.status
local metadata = obj.metadata or {}
local generation = metadata.generation or 1

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick the rollout up"
  return hs
end

-- The operator records the generation it acted on in status and in every condition.
local observed = status.observedGeneration or 0
local blocked = false
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.observedGeneration ~= nil and c.observedGeneration > observed then
      observed = c.observedGeneration
    end
    if c.type == "CleanupVerified" and c.status == "False" and c.reason == "CleanupBlocked" then
      blocked = true
    end
  end
end
if observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local phase = status.phase
local run = status.run or 0
local terminal = phase == "Succeeded" or phase == "Failed" or phase == "Aborted"
  or phase == "Superseded"

-- retry=N starts run N when N is a whole number above the current run (as the
-- operator reads it). Without the string library, "a whole number" is checked as
-- tonumber() giving back the same text.
local annotations = metadata.annotations or {}
local retry = annotations["canary-operator.dev/retry"]
local wanted = nil
if retry ~= nil then
  wanted = tonumber(retry)
end
if terminal and wanted ~= nil and wanted % 1 == 0 and tostring(wanted) == retry
    and wanted > run then
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
elseif phase == "CleaningUp" and (blocked or (status.cleanup ~= nil and status.cleanup.lastError ~= nil)) then
  -- A blocked cleanup keeps the target's lock and retries: a human may be needed.
  hs.status = "Degraded"
elseif phase == "Pending" or phase == "Queued" or phase == "Progressing"
    or phase == "CleaningUp" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
end
hs.message = status.message or phase
return hs
