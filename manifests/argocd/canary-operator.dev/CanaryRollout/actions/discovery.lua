-- Argo CD resource actions for canary-operator.dev/CanaryRollout: the same four
-- controls as `kubectl canary` (resume, abort, promote, retry), each enabled only
-- when the operator would act on it. Base library only (Argo CD's sandbox).
local actions = {}
local status = obj.status or {}
local spec = obj.spec or {}
local phase = status.phase or "Pending"
local ended = phase == "Succeeded" or phase == "Failed" or phase == "Aborted"
  or phase == "Superseded"

actions["resume"] = {["disabled"] = ended or not (phase == "Paused" or spec.paused == true)}
actions["abort"] = {["disabled"] = ended or spec.abort == true}
actions["promote"] = {["disabled"] = ended or phase == "CleaningUp"}
actions["retry"] = {["disabled"] = not ended}
return actions
