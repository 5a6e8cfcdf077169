"""The Lua scripts of the Redis job store: each one runs atomically on the server.

They decide nothing about statuses: the caller passes the status it expects and the one to
write (computed by :mod:`.rules`). What they own is bookkeeping that must never be half done:
popping queued ids, and keeping every job in exactly the one index its status calls for.

Keys (``P`` is the configured prefix):

    P job:<id>        hash: the job's fields (codec), plus ``rev`` (bumped on every write, the
                      compare-and-set token) and ``idem`` (its idempotency scope, if any)
    P media:<id>      string: the uploaded bytes, until the job finishes
    P idem:<scope>    string: the job id an (owner, Idempotency-Key) pair created
    P queued:<kind>   zset: queued jobs of a kind, score = queued_at (FIFO)
    P leases          zset: running jobs, score = lease_expires_at
    P done:<status>   zset: finished jobs of a status, score = finished_at (for the TTL purge)
    P notices         pub/sub channel: ``queued`` when a job enters the queue, ``finished:<id>`` when
                      one ends (the messages of jobs.notices)

A finished job's hash and idempotency key also get the TTL as a Redis expiry, and its media is
deleted, so nothing outlives the TTL even if no process sweeps.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import JOB_KINDS, TERMINAL, JobStatus
from .notices import FINISHED, QUEUED

__all__ = ["CAS", "LEASE", "PURGE", "SUBMIT"]


def _lua_list(values: Iterable[str]) -> str:
    return "{" + ", ".join(f"'{value}'" for value in values) + "}"


_PRELUDE = f"""
local prefix = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local KINDS = {_lua_list(JOB_KINDS)}
local TERMINAL = {_lua_list(sorted(TERMINAL))}

local function job_key(id) return prefix .. 'job:' .. id end

-- Put a job in the one index its status calls for, and out of every other.
local function place(id)
  local key = job_key(id)
  local f = redis.call('HMGET', key, 'status', 'kind', 'queued_at', 'lease_expires_at', 'finished_at', 'idem')
  for _, kind in ipairs(KINDS) do redis.call('ZREM', prefix .. 'queued:' .. kind, id) end
  redis.call('ZREM', prefix .. 'leases', id)
  for _, status in ipairs(TERMINAL) do redis.call('ZREM', prefix .. 'done:' .. status, id) end
  if f[1] == '{JobStatus.QUEUED}' then
    redis.call('ZADD', prefix .. 'queued:' .. f[2], f[3], id)
    redis.call('PUBLISH', prefix .. 'notices', '{QUEUED.decode()}')
  elseif f[1] == '{JobStatus.RUNNING}' then
    redis.call('ZADD', prefix .. 'leases', f[4], id)
  else
    redis.call('ZADD', prefix .. 'done:' .. f[1], f[5], id)
    redis.call('PEXPIRE', key, ttl_ms)
    redis.call('DEL', prefix .. 'media:' .. id)
    if f[6] then redis.call('PEXPIRE', prefix .. 'idem:' .. f[6], ttl_ms) end
    redis.call('PUBLISH', prefix .. 'notices', '{FINISHED.decode()}' .. id)
  end
end
"""

SUBMIT = _PRELUDE + """
-- ARGV[3] id, [4] idempotency scope or '', [5] max queued, [6] '1' if media was staged, then field/value pairs.
-- Returns {1, id} (created), {0, existing id} (idempotent repeat) or {-1, ''} (queue full).
local id, scope = ARGV[3], ARGV[4]
if scope ~= '' then
  local existing = redis.call('GET', prefix .. 'idem:' .. scope)
  if existing and redis.call('EXISTS', job_key(existing)) == 1 then return {0, existing} end
end
local queued = 0
for _, kind in ipairs(KINDS) do queued = queued + redis.call('ZCARD', prefix .. 'queued:' .. kind) end
if queued >= tonumber(ARGV[5]) then return {-1, ''} end
local key = job_key(id)
redis.call('HSET', key, 'rev', 1, unpack(ARGV, 7))
if scope ~= '' then
  redis.call('HSET', key, 'idem', scope)
  redis.call('SET', prefix .. 'idem:' .. scope, id)
end
if ARGV[6] == '1' then redis.call('PERSIST', prefix .. 'media:' .. id) end
place(id)
return {1, id}
"""

LEASE = _PRELUDE + """
-- ARGV[3] worker, [4] now, [5] lease expiry, [6] expected status, [7] target status, then kind/count pairs
-- in the order to take them. Returns the ids leased.
local out = {}
for i = 8, #ARGV, 2 do
  local popped = redis.call('ZPOPMIN', prefix .. 'queued:' .. ARGV[i], tonumber(ARGV[i + 1]))
  for j = 1, #popped, 2 do
    local id = popped[j]
    local key = job_key(id)
    if redis.call('HGET', key, 'status') == ARGV[6] then
      redis.call('HSET', key, 'status', ARGV[7], 'lease_owner', ARGV[3], 'lease_expires_at', ARGV[5])
      redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HINCRBY', key, 'rev', 1)
      redis.call('HSETNX', key, 'started_at', ARGV[4])
      place(id)
      out[#out + 1] = id
    end
  end
end
return out
"""

CAS = _PRELUDE + """
-- ARGV[3] id, [4] expected rev, [5] expected status, [6] n, then n field/value pairs to set,
-- then the fields to delete. Returns 1 if written, 0 if the job changed since it was read (or is gone).
local key = job_key(ARGV[3])
local current = redis.call('HMGET', key, 'rev', 'status')
if current[1] ~= ARGV[4] or current[2] ~= ARGV[5] then return 0 end
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = i, #ARGV do redis.call('HDEL', key, ARGV[k]) end
redis.call('HINCRBY', key, 'rev', 1)
place(ARGV[3])
return 1
"""

PURGE = _PRELUDE + """
-- ARGV[3] cutoff (finished at or before it), [4] most ids per status. Returns the ids removed.
local out = {}
for _, status in ipairs(TERMINAL) do
  local index = prefix .. 'done:' .. status
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))) do
    local scope = redis.call('HGET', job_key(id), 'idem')
    if scope and redis.call('GET', prefix .. 'idem:' .. scope) == id then
      redis.call('DEL', prefix .. 'idem:' .. scope)
    end
    redis.call('DEL', job_key(id), prefix .. 'media:' .. id)
    redis.call('ZREM', index, id)
    out[#out + 1] = id
  end
end
return out
"""
