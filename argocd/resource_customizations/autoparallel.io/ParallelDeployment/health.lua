-- Argo CD health check for autoparallel.io/ParallelDeployment (Lua 5.1, as Argo CD runs it).
-- Healthy:     the operator has seen the current generation and Ready=True (or planOnly and planned).
-- Degraded:    Degraded=True or Planned=False for the current generation (no plan fits, a child failed,
--              pods cannot be scheduled): the condition's reason and message say why.
-- Progressing: anything else — not yet planned, a stale observedGeneration, replicas rolling out.
local hs = {}

local function condition(conditions, type_)
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return (c.reason or c.type) .. ": " .. c.message
  end
  return c.reason or c.type
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the autoparallel operator to plan this deployment"
  return hs
end

-- A status written for an older spec says nothing about the current one.
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local conditions = status.conditions
local planned = condition(conditions, "Planned")
local ready = condition(conditions, "Ready")
local degraded = condition(conditions, "Degraded")

local function current(c)
  return c ~= nil and (generation == nil or c.observedGeneration == nil or c.observedGeneration == generation)
end

if current(degraded) and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end
if current(planned) and planned.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(planned)
  return hs
end
if current(ready) and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if current(planned) and planned.status == "True" and planned.reason == "PlanOnly" then
  hs.status = "Healthy"
  hs.message = describe(planned)
  return hs
end

hs.status = "Progressing"
if current(ready) then
  hs.message = describe(ready)
elseif current(planned) then
  hs.message = describe(planned)
else
  hs.message = "Waiting for the autoparallel operator to report readiness"
end
return hs
