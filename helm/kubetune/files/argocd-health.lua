-- Argo CD health check for kubetune.io/FineTuneJob (argocd-cm key
-- resource.customizations.health.kubetune.io_FineTuneJob; docs/gitops.md embeds this file).
--   Healthy     phase Succeeded (artifacts are in S3)
--   Degraded    condition Stalled=True (phase Failed, or a spec that cannot run)
--   Suspended   phase Suspended (spec.runPolicy.suspend, or preempted by a queue)
--               (kstatus/Flux: InProgress, since the model is not there yet)
--   Progressing anything else: no status yet, Pending, Running, or a spec change the
--               operator has not observed yet
local hs = { status = "Progressing", message = "Waiting for the kubetune operator" }

local status = obj.status
if status == nil then
  return hs
end

local function condition(kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local msg = status.message
  if (msg == nil or msg == "") and c ~= nil then
    msg = c.message
  end
  local reason = ""
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    reason = c.reason
  end
  if msg ~= nil and msg ~= "" and reason ~= "" then
    return reason .. ": " .. msg
  elseif msg ~= nil and msg ~= "" then
    return msg
  end
  return reason
end

-- A spec change the operator has not seen yet: the status below describes an older spec.
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

-- Stalled=True: the run failed, or the current spec cannot run (e.g. a ServiceAccount or
-- Secret that is not allowed), even while an older run is still active or has succeeded.
-- kstatus (Flux) reads the same condition as Failed.
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local phase = status.phase
-- Older or partial statuses: fall back on the terminal conditions.
if phase == nil or phase == "" then
  local s, f, p = condition("Succeeded"), condition("Failed"), condition("Suspended")
  if s ~= nil and s.status == "True" then
    phase = "Succeeded"
  elseif f ~= nil and f.status == "True" then
    phase = "Failed"
  elseif p ~= nil and p.status == "True" then
    phase = "Suspended"
  end
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(condition("Succeeded"))
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(condition("Failed"))
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(condition("Suspended"))
else
  local msg = describe(condition("Ready"))
  local progress = status.progress
  if progress ~= nil and progress.step ~= nil and progress.totalSteps ~= nil then
    local steps = "step " .. tostring(progress.step) .. "/" .. tostring(progress.totalSteps)
    if msg == "" then
      msg = steps
    else
      msg = msg .. " (" .. steps .. ")"
    end
  end
  if phase ~= nil and phase ~= "" then
    if msg == "" then
      msg = phase
    else
      msg = phase .. ": " .. msg
    end
  end
  if msg ~= "" then
    hs.message = msg
  end
end
if hs.message == "" then
  hs.message = phase
end
return hs
