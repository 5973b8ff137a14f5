"""The Lua scripts of the Redis engine, each one atomic step, with what its KEYS and ARGV are.

Every write of a job is one script: the compare-and-set on the job's revision and attempt, the job's
head, its revision entry, its new segments, its change position, its webhook mark, when it ends its
expiry (Redis deletes a finished job at its expire time: retention is Redis expiry) and its queue
entry's removal, and the PUBLISH of the event on ``keys.events``, all at once: no replica sees an
event that is not stored. That is why the store's commit is the publisher of every event (CREATE and
SAVE end with PUBLISH, in the wire format ``codec.decode_event`` reads) and the bus only subscribes.

A script answers a write it already applied (sent again after a lost answer) as done, so a writer
may send a batch twice. The consumer group is named ``'workers'`` inside them: ``keys.GROUP``.
"""

from __future__ import annotations

__all__ = ["CLAIM_WEBHOOK", "CREATE", "DELETE", "EPOCH", "FINISH_WEBHOOK", "HOLD", "LOAD", "POSITION", "SAVE", "SPARE", "STATS",
           "STORE", "TAKE", "TAKE_OVER"]

# KEYS: job, revs, req (or req-none), jobs index, changes, position, active, queue, queue bytes
# ARGV: id, job JSON, request hash, payload, has a request id (1/0), job key prefix, created, tenant,
#       request id, revs key prefix, segs key prefix, events channel, max_queue (0: none),
#       max_queued_bytes (0: none), uploaded audio bytes (0: none), the uploaded audio's key ('' none),
#       the queue deadline (ms; 0: none), the queue deadlines key, the route's scheduler prefix
#       (keys.sched), the job's priority (1-5), its tenant's weight, max_queued (0: none), submit_rate
#       (0: none), submit burst, rate bucket key, max_running (0: none), the revision's delta (codec.job_delta)
# Answers {created (1 new or this very create again, 0 the request's existing job, 2 queue full,
# 3 queue bytes full, 4 the tenant's rate passed, 5 the tenant's queue full), job id, request hash,
# position (2, 3, 5: what is held; 4: the wait for the next token, ms)}. The rate is a token bucket
# on Redis's clock (the same for every replica), spent last, by a job that is created. Admission is part of it:
# the jobs waiting for a worker and the input bytes held are checked and counted in the same step that
# stores and queues the job, so replicas submitting at once cannot pass a limit together. The job
# waits in its tenant's set of the route's scheduler (TAKE); a tenant that had none waiting joins the
# round at the pass of the last job taken.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'created_as') == ARGV[2] then  -- this very create, sent again: done
    return {1, ARGV[1], ARGV[3], tonumber(redis.call('HGET', KEYS[1], 'pos'))}
  end
  return redis.error_reply('EXISTS job ' .. ARGV[1])
end
local has_request = ARGV[5] == '1'
if has_request then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local key = ARGV[6] .. existing
    local held = redis.call('HMGET', key, 'expires', 'job')
    local expires = held[1]
    if not expires and held[2] then  -- an ended job keeps its expiry in its JSON alone (SAVE)
      expires = cjson.decode(held[2]).expires
      if type(expires) ~= 'number' then expires = '' end
    end
    if expires and (expires == '' or tonumber(expires) > tonumber(ARGV[7])) then
      return {0, existing, redis.call('HGET', key, 'req_hash'), 0}
    end
    if expires then  -- expired, not swept yet: the key is free again, and the old job goes
      redis.call('DEL', key, ARGV[10] .. existing, ARGV[11] .. existing)
      redis.call('ZREM', KEYS[4], existing)
      redis.call('ZREM', KEYS[5], existing)
      redis.call('SREM', KEYS[7], existing)
    end
  end
end
local size = #ARGV[4] + tonumber(ARGV[15] or '0')  -- an Upload's audio counts as the job's input too
local max_queue, max_bytes = tonumber(ARGV[13]), tonumber(ARGV[14])
local sched = ARGV[19]
if max_queue > 0 then  -- jobs no worker has taken yet
  local waiting = redis.call('LLEN', sched .. 'waiting')
  if waiting >= max_queue then return {2, '', '', waiting} end
end
local held = tonumber(redis.call('GET', KEYS[9]) or '0')
if max_bytes > 0 and held + size > max_bytes then return {3, '', '', held} end
local tenant_max = tonumber(ARGV[22] or '0')
if tenant_max > 0 then
  local mine = redis.call('ZCARD', sched .. 't:' .. ARGV[8])
  if mine >= tenant_max then return {5, '', '', mine} end
end
local rate = tonumber(ARGV[23] or '0')
if rate > 0 then
  local burst = tonumber(ARGV[24])
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local bucket = redis.call('HMGET', ARGV[25], 'tokens', 'ts')
  local tokens = tonumber(bucket[1] or burst)
  tokens = math.min(burst, tokens + math.max(0, now - tonumber(bucket[2] or now)) * rate)
  if tokens < 1 then return {4, '', '', math.ceil((1 - tokens) / rate * 1000)} end
  redis.call('HSET', ARGV[25], 'tokens', string.format('%.17g', tokens - 1), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', ARGV[25], math.ceil(burst / rate * 1000) + 1000)
end
redis.call('INCRBY', KEYS[9], size)
local pos = redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[1], 'job', ARGV[2], 'created_as', ARGV[2], 'rev', 1, 'att', 0, 'seg', 0, 'pos', pos, 'tenant', ARGV[8],
           'request_id', ARGV[9], 'req_hash', ARGV[3], 'payload', ARGV[4], 'expires', '', 'qb', size, 'qk', KEYS[9])
redis.call('XADD', KEYS[2], '0-1', 'd', ARGV[27], 'seg', 0)
if tonumber(ARGV[17] or '0') > 0 then redis.call('ZADD', ARGV[18], ARGV[17], ARGV[1]) end  -- swept when due
if ARGV[16] and ARGV[16] ~= '' then  -- the upload stays as long as the job's inputs (not its put's expiry)
  redis.call('PERSIST', ARGV[16])
  redis.call('HSET', KEYS[1], 'ak', ARGV[16])
end
if has_request then redis.call('SET', KEYS[3], ARGV[1]) end
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('ZADD', KEYS[5], pos, ARGV[1])
redis.call('SADD', KEYS[7], ARGV[1])
local waiting = sched .. 't:' .. ARGV[8]  -- queued for the route's workers, at once
if redis.call('ZCARD', waiting) == 0 then
  redis.call('ZADD', sched .. 'tenants', redis.call('GET', sched .. 'vt') or '0', ARGV[8])
end
redis.call('ZADD', waiting, tonumber(ARGV[20]) * 1099511627776 + redis.call('INCR', sched .. 'seq'), ARGV[1])
redis.call('HSET', sched .. 'weights', ARGV[8], ARGV[21])
redis.call('HSET', sched .. 'maxrun', ARGV[8], ARGV[26] or '0')
redis.call('RPUSH', sched .. 'waiting', '1')
redis.call('ZADD', sched .. 'arrived', math.floor(tonumber(ARGV[7]) * 1000), ARGV[1])
redis.call('RPUSH', sched .. 'wake', '1')
redis.call('LTRIM', sched .. 'wake', -64, -1)
redis.call('HSET', KEYS[1], 'sq', waiting, 'ss', sched)
redis.call('PUBLISH', ARGV[12], ARGV[1] .. '|1|0|' .. pos .. '|0|' .. #ARGV[8] .. '|' .. ARGV[8] .. '{"j":' .. ARGV[2] .. ',"s":[]}')
return {1, ARGV[1], ARGV[3], pos}
"""

# A job that stops waiting without a worker taking it (it ended, or was deleted) leaves its tenant's set
# of the route's scheduler, and the tenant the round if that was its last; one a worker took leaves its
# tenant's running count (and wakes the workers, if the tenant has a max_running).
_UNQUEUE = """
local function unqueue(job_key, id, tenant)
  local sq = redis.call('HMGET', job_key, 'sq', 'ss', 'rt')
  if sq[1] and redis.call('ZREM', sq[1], id) == 1 then
    redis.call('LPOP', sq[2] .. 'waiting')
    redis.call('ZREM', sq[2] .. 'arrived', id)
    if redis.call('ZCARD', sq[1]) == 0 then redis.call('ZREM', sq[2] .. 'tenants', tenant) end
  end
  if sq[3] then  -- taken by a worker: no longer one of its tenant's running jobs
    if redis.call('HINCRBY', sq[3] .. 'running', tenant, -1) <= 0 then redis.call('HDEL', sq[3] .. 'running', tenant) end
    redis.call('HDEL', job_key, 'rt')
    if tonumber(redis.call('HGET', sq[3] .. 'maxrun', tenant) or '0') > 0 then  -- its next may be taken now
      redis.call('RPUSH', sq[3] .. 'wake', '1')
      redis.call('LTRIM', sq[3] .. 'wake', -64, -1)
    end
  end
end
"""

# KEYS: job, revs, segs, changes, position, active, tomb, expiring, req, queue, webhook, webhooks due
# ARGV: id, expected revision, attempt (-1: any), count attempt (0/1), revision, job JSON, segment
#       count, terminal (0/1), result ('' none), ttl ms, tombstone ttl ms, tenant, n new segments,
#       segments..., expires, tombstone end, events channel, webhook mark (now; '' none), webhook URL,
#       keep inputs (1: an ended job keeps its inputs and uploaded audio until it expires, for Retry),
#       the length of the job JSON's fixed fields (every revision's JSON starts with the same ones)
# Answers the revision's change position; an error reply CONFLICT... when the compare-and-set fails.
SAVE = _UNQUEUE + """
local cur = redis.call('HMGET', KEYS[1], 'rev', 'att', 'job', 'pos')
if not cur[1] then return redis.error_reply('CONFLICT job ' .. ARGV[1] .. ' is gone') end
if tonumber(cur[1]) == tonumber(ARGV[5]) and cur[3] == ARGV[6] then
  return tonumber(cur[4])  -- this very revision, sent again after a lost answer: already stored
end
local att = tonumber(cur[2]) + tonumber(ARGV[4])
if tonumber(cur[1]) ~= tonumber(ARGV[2]) or (tonumber(ARGV[3]) >= 0 and att ~= tonumber(ARGV[3])) then
  return redis.error_reply('CONFLICT job ' .. ARGV[1] .. ' is at revision ' .. cur[1] .. ' (attempt ' .. cur[2] ..
                           '), not ' .. ARGV[2] .. ' (attempt ' .. ARGV[3] .. ')')
end
local pos = redis.call('INCR', KEYS[5])
local count = tonumber(ARGV[7])
local n = tonumber(ARGV[13])
redis.call('HSET', KEYS[1], 'job', ARGV[6], 'rev', ARGV[5], 'att', att, 'seg', count, 'pos', pos)
redis.call('XADD', KEYS[2], '0-' .. ARGV[5], 'd', ARGV[21 + n], 'seg', count)
if n > 0 then
  redis.call('LTRIM', KEYS[3], 0, count - n - 1)
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 14, 13 + n))
end
redis.call('ZADD', KEYS[4], pos, ARGV[1])
local mark = ARGV[17 + n]
if mark ~= '' then  -- a revision the job's webhook may want: due now, unless a dispatcher holds it
  redis.call('HSET', KEYS[11], 'pending', ARGV[5], 'url', ARGV[18 + n])
  if tonumber(redis.call('HGET', KEYS[11], 'lease') or '0') <= tonumber(mark) then
    local due = redis.call('ZSCORE', KEYS[12], ARGV[1])
    if (not due) or tonumber(due) > tonumber(mark) then redis.call('ZADD', KEYS[12], mark, ARGV[1]) end
  end
end
if ARGV[8] == '1' then
  local ttl = tonumber(ARGV[10])
  if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[9]) end
  local qb = redis.call('HMGET', KEYS[1], 'qb', 'qk')
  if qb[1] then redis.call('DECRBY', qb[2], qb[1]) end  -- its input no longer counts against the queue
  local ak = redis.call('HGET', KEYS[1], 'ak')
  unqueue(KEYS[1], ARGV[1], ARGV[12])  -- one that ends waiting (cancelled, timed out) leaves its scheduler
  if ARGV[19 + n] == '1' then
    if ak then redis.call('PEXPIRE', ak, ttl) end  -- its uploaded audio, kept as long as the job
    redis.call('HDEL', KEYS[1], 'ckpt', 'qb', 'qk', 'sq', 'ss')
  else
    if ak then redis.call('DEL', ak) end  -- its uploaded audio
    redis.call('HDEL', KEYS[1], 'payload', 'ckpt', 'qb', 'qk', 'ak', 'sq', 'ss')
  end
  redis.call('SREM', KEYS[6], ARGV[1])
  local entry = redis.call('HGET', KEYS[1], 'entry')
  if entry then  -- an ended job leaves its route's queue, and its worker's pending list (group: work.redis.GROUP)
    redis.call('XACK', KEYS[10], 'workers', entry)
    redis.call('XDEL', KEYS[10], entry)
  end
  -- Compacted: the revisions stream goes (a stream costs some 4 KB even for three entries); its entries go into
  -- one field of the job, 'hist', a line each: "revision|segment count|~" and the revision's delta (the fields
  -- that change, codec.job_delta; the fixed ones are the job's), or "^" for the end itself (the JSON in 'job').
  -- (Entries written before deltas hold the whole JSON: "+" and the JSON after the fixed fields, 'hn' their
  -- length, or "=" and the whole JSON.)
  local n_fixed = tonumber(ARGV[20 + n]) or 0
  local fixed = string.sub(ARGV[6], 1, n_fixed)
  local lines, whole = {}, false
  for i, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
    local kind, value, seg = entry[2][1], entry[2][2], entry[2][4]
    local rev = string.sub(entry[1], 3)
    if rev == ARGV[5] or value == ARGV[6] then  -- the end itself: kept whole in 'job' already
      lines[i] = rev .. '|' .. seg .. '|^'
    elseif kind == 'd' then
      lines[i] = rev .. '|' .. seg .. '|~' .. value
    elseif n_fixed > 0 and string.sub(value, 1, n_fixed) == fixed then
      lines[i] = rev .. '|' .. seg .. '|+' .. string.sub(value, n_fixed + 1)
      whole = true
    else
      lines[i] = rev .. '|' .. seg .. '|=' .. value
    end
  end
  redis.call('HSET', KEYS[1], 'hist', table.concat(lines, '\\n'))
  if whole then redis.call('HSET', KEYS[1], 'hn', n_fixed) end  -- (read only for "+" lines)
  redis.call('DEL', KEYS[2])
  -- What only a job still going needs: its create's own JSON (a create sent again, CREATE), its queue entry;
  -- and what the job's JSON holds too (its tenant, request id and expiry: DELETE and CREATE read them there).
  redis.call('HDEL', KEYS[1], 'created_as', 'entry', 'tenant', 'request_id', 'expires')
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
  if redis.call('EXISTS', KEYS[9]) == 1 then redis.call('PEXPIRE', KEYS[9], ttl) end
  if redis.call('EXISTS', KEYS[11]) == 1 then redis.call('PEXPIRE', KEYS[11], ttl) end
  redis.call('SET', KEYS[7], ARGV[12] .. '|' .. ARGV[15 + n], 'PX', tonumber(ARGV[11]))
  redis.call('ZADD', KEYS[8], tonumber(ARGV[14 + n]) * 1000, ARGV[1])
end
local segments = ''
if n > 0 then segments = table.concat(ARGV, ',', 14, 13 + n) end
redis.call('PUBLISH', ARGV[16 + n], ARGV[1] .. '|' .. ARGV[5] .. '|' .. ARGV[8] .. '|' .. pos .. '|' .. (count - n) .. '|' ..
           #ARGV[12] .. '|' .. ARGV[12] .. '{"j":' .. ARGV[6] .. ',"s":[' .. segments .. ']}')
return pos
"""

# KEYS: job, revs, segs, tomb, jobs index prefix, changes prefix, active, expiring, webhook, webhooks due
# ARGV: id, tombstone ttl ms (0: none), req prefix, tombstone end
DELETE = _UNQUEUE + """
local head = redis.call('HMGET', KEYS[1], 'tenant', 'request_id', 'job')
local tenant, request_id = head[1], head[2]
if head[3] and not tenant then  -- ended: its tenant and request id are in its JSON alone (SAVE)
  local job = cjson.decode(head[3])
  tenant, request_id = job.tenant, job.request_id
  if type(request_id) ~= 'string' then request_id = '' end
end
if not tenant then
  -- Expired by Redis before a sweep came (the usual case: both happen at the job's expiry): what still
  -- names the job goes, or the sweep would find it again forever. The tenant is the tombstone's.
  local tomb = redis.call('GET', KEYS[4])
  local owner = tomb and string.match(tomb, '^(.*)|[^|]*$')
  if owner then
    redis.call('ZREM', KEYS[5] .. owner, ARGV[1])
    redis.call('ZREM', KEYS[6] .. owner, ARGV[1])
    if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[4], owner .. '|' .. ARGV[4], 'PX', tonumber(ARGV[2])) end
  end
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[9])
  redis.call('SREM', KEYS[7], ARGV[1])
  redis.call('ZREM', KEYS[8], ARGV[1])
  redis.call('ZREM', KEYS[10], ARGV[1])
  return 0
end
local qb = redis.call('HMGET', KEYS[1], 'qb', 'qk')
if qb[1] then redis.call('DECRBY', qb[2], qb[1]) end  -- a job deleted before it ended
local ak = redis.call('HGET', KEYS[1], 'ak')
if ak then redis.call('DEL', ak) end
unqueue(KEYS[1], ARGV[1], tenant)
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[4], tenant .. '|' .. ARGV[4], 'PX', tonumber(ARGV[2]))
else
  redis.call('DEL', KEYS[4])  -- forgotten, not expired: no tombstone, not even the one set in advance
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if request_id and request_id ~= '' then
  local req = ARGV[3] .. tenant .. ':' .. request_id
  if redis.call('GET', req) == ARGV[1] then redis.call('DEL', req) end
end
redis.call('ZREM', KEYS[5] .. tenant, ARGV[1])
redis.call('ZREM', KEYS[6] .. tenant, ARGV[1])
redis.call('SREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('DEL', KEYS[9])
redis.call('ZREM', KEYS[10], ARGV[1])
return 1
"""

# KEYS: webhook, webhooks due, job; ARGV: id, now, lease until
CLAIM_WEBHOOK = """
if redis.call('EXISTS', KEYS[3]) == 0 then  -- the job is gone (expired): so is its webhook
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[1])
  return false
end
local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not due) or tonumber(due) > tonumber(ARGV[2]) then return false end
if tonumber(redis.call('HGET', KEYS[1], 'lease') or '0') > tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'lease', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])  -- hidden from the others until the lease runs out
return {redis.call('HGET', KEYS[1], 'pending') or '0', redis.call('HGET', KEYS[1], 'state') or ''}
"""

# KEYS: webhook, webhooks due, job
# ARGV: id, state JSON, examined revision, due if marked since, due ('' none), the claim's lease
FINISH_WEBHOOK = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[1])
  return 0
end
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[6] then return 0 end  -- the claim ran out (maybe another's now)
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'lease', 0)
local due = ARGV[5]
if tonumber(redis.call('HGET', KEYS[1], 'pending') or '0') > tonumber(ARGV[3]) then due = ARGV[4] end
if due == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], due, ARGV[1]) end
return 1
"""

# KEYS: job; ARGV: the attempt to take back (only if it is still the job's count)
SPARE = """
local att = tonumber(redis.call('HGET', KEYS[1], 'att'))
if att and att == tonumber(ARGV[1]) and att > 0 then redis.call('HINCRBY', KEYS[1], 'att', -1) end
return 0
"""

# KEYS: job, segs. A worker taking a job over counts its attempt and reads the job in the same step: a
# write of the previous holder's attempt is either in what it reads or refused afterwards (the save
# script fences each write by its attempt), never lost between the two.
TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local att = redis.call('HINCRBY', KEYS[1], 'att', 1)
local head = redis.call('HMGET', KEYS[1], 'job', 'seg', 'ckpt')
local segs = redis.call('LRANGE', KEYS[2], 0, tonumber(head[2]) - 1)
return {head[1], att, head[3] or '', segs}
"""

# KEYS: job, segs; ARGV: other fields of the job's hash. A read of the job whole at one moment, in one
# command: {{job JSON, segment count, the fields...}, its first <segment count> segments} (nils for a job gone).
LOAD = """
local head = redis.call('HMGET', KEYS[1], 'job', 'seg', unpack(ARGV))
if not head[1] or tonumber(head[2]) == 0 then return {head, {}} end
return {head, redis.call('LRANGE', KEYS[2], 0, tonumber(head[2]) - 1)}
"""

# KEYS: store_id, position; ARGV: the store id this process knows, a new one, the highest change position
# it has seen committed. The store id names the data (resume tokens carry it): Redis restarted empty or
# flushed has none, and a failover to a replica that was behind has a position lower than one already
# committed; either way the data is not what the gateway wrote, and a new id is set (once: the replica
# that comes first sets it, the others find it) that every process then adopts.
EPOCH = """
local current = redis.call('GET', KEYS[1])
local position = tonumber(redis.call('GET', KEYS[2]) or '0')
if (not current) or (current == ARGV[1] and position < tonumber(ARGV[3])) then
  redis.call('SET', KEYS[1], ARGV[2])
  current = ARGV[2]
end
return {current, position}
"""

# KEYS: the stream; ARGV: group, consumer, idle ms (0: renew), entry ids. For each entry still pending
# under this consumer: renews it (resets its idle time), or with an idle time hands it over (it looks idle
# past the lease, so the next worker to look takes it at once); answers the entries that are not this
# consumer's: another worker took them over (this process stalled past the lease), or the job ended
# elsewhere. A plain XCLAIM, renewing or handing over, would take a job back from the worker that took it
# over (and a job bounced between the two would spend an attempt at each bounce).
HOLD = """
local lost = {}
for i = 4, #ARGV do
  local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if held[1] and held[1][2] == ARGV[2] then
    if ARGV[3] == '0' then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    end
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# KEYS: the route's stream; ARGV: the route's scheduler prefix, group, consumer, how many, job key prefix.
# Takes up to that many jobs for this consumer, in the scheduler's order: the tenant of the lowest pass
# (ties: by name) not at its max_running, its most urgent job (then the first to come); the tenant's pass
# then grows by 1/weight, or it leaves the round when it has none left waiting. Each job taken gets a
# stream entry, read at once by this consumer (pending under it: its lease, renewed and taken over as
# before). An entry some older gateway added without reading it is delivered first. Answers {job id, entry id, ...}.
TAKE = """
local stream, sched, group, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[4])
redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')  -- again if Redis lost it (emptied)
local taken = {}
local old = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
if old then
  for _, e in ipairs(old[1][2]) do
    if e[2] and e[2][2] then taken[#taken + 1] = e[2][2]; taken[#taken + 1] = e[1] end
  end
end
while #taken < 2 * count do
  local tenant, pass
  local from = 0
  repeat  -- the first in the round not at its max_running, 64 at a time
    local ring = redis.call('ZRANGE', sched .. 'tenants', from, from + 63, 'WITHSCORES')
    for i = 1, #ring, 2 do
      local cap = tonumber(redis.call('HGET', sched .. 'maxrun', ring[i]) or '0') or 0
      if cap <= 0 or tonumber(redis.call('HGET', sched .. 'running', ring[i]) or '0') < cap then
        tenant, pass = ring[i], tonumber(ring[i + 1])
        break
      end
    end
    from = from + 64
  until tenant or #ring < 128
  if not tenant then break end
  local waiting = sched .. 't:' .. tenant
  local next_job = redis.call('ZPOPMIN', waiting)
  if redis.call('ZCARD', waiting) == 0 then
    redis.call('ZREM', sched .. 'tenants', tenant)
  else
    local weight = tonumber(redis.call('HGET', sched .. 'weights', tenant) or '1') or 1
    redis.call('ZADD', sched .. 'tenants', string.format('%.17g', pass + 1 / weight), tenant)
  end
  if next_job[1] then
    local id = next_job[1]
    redis.call('SET', sched .. 'vt', string.format('%.17g', pass))
    redis.call('LPOP', sched .. 'waiting')
    redis.call('ZREM', sched .. 'arrived', id)
    local key = ARGV[5] .. id
    if redis.call('EXISTS', key) == 1 then
      local entry = redis.call('XADD', stream, '*', 'job', id)
      redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
      redis.call('HSET', key, 'entry', entry, 'rt', sched)
      redis.call('HDEL', key, 'sq', 'ss')
      redis.call('HINCRBY', sched .. 'running', tenant, 1)
      taken[#taken + 1] = id
      taken[#taken + 1] = entry
    end
  end
end
return taken
"""

# KEYS: none; ARGV: the route's scheduler prefix. Read only (metrics, once a second): {oldest waiting job's
# creation (ms; '' none), its waiting jobs by priority 1-5 (five counts), then per tenant with jobs waiting
# or running: name, waiting, running}.
STATS = """
local sched = ARGV[1]
local oldest = redis.call('ZRANGE', sched .. 'arrived', 0, 0, 'WITHSCORES')
local out = {oldest[2] or '', 0, 0, 0, 0, 0}
local tenants = {}
for _, tenant in ipairs(redis.call('ZRANGE', sched .. 'tenants', 0, -1)) do tenants[tenant] = true end
local running = redis.call('HGETALL', sched .. 'running')
for i = 1, #running, 2 do tenants[running[i]] = true end
for tenant in pairs(tenants) do
  local set = sched .. 't:' .. tenant
  for p = 1, 5 do
    out[1 + p] = out[1 + p] + redis.call('ZCOUNT', set, p * 1099511627776, '(' .. ((p + 1) * 1099511627776))
  end
  out[#out + 1] = tenant
  out[#out + 1] = redis.call('ZCARD', set)
  out[#out + 1] = tonumber(redis.call('HGET', sched .. 'running', tenant) or '0')
end
return out
"""

# KEYS: none; ARGV: the route's scheduler prefix, a job id, its tenant. Read only: the job's place in the
# order TAKE would take the waiting jobs (1: next; 0: it does not wait). Each tenant's passes go on by 1/weight
# whatever the others do, so the job is taken at pass p = its tenant's pass + (jobs of its tenant before it) /
# weight, and before it go, of each other tenant, the jobs whose pass is lower (ties: by name): one look per
# tenant, not a replay. (Passes within 1e-9 count as a tie. Tenants at their max_running are not skipped.)
POSITION = """
local sched, target, mine = ARGV[1], ARGV[2], ARGV[3]
local rank = redis.call('ZRANK', sched .. 't:' .. mine, target)
if not rank then return 0 end
local function weight(t) return tonumber(redis.call('HGET', sched .. 'weights', t) or '1') or 1 end
local at = tonumber(redis.call('ZSCORE', sched .. 'tenants', mine)) + rank / weight(mine)
local position = rank + 1
local ring = redis.call('ZRANGE', sched .. 'tenants', 0, -1, 'WITHSCORES')
for i = 1, #ring, 2 do
  local t = ring[i]
  if t ~= mine then
    local x = (at - tonumber(ring[i + 1])) * weight(t)
    local tie = math.floor(x + 0.5)
    local before
    if math.abs(x - tie) < 1e-9 * math.max(1, math.abs(x)) then
      before = tie + ((t < mine) and 1 or 0)
    else
      before = math.floor(x) + 1
    end
    if before > 0 then position = position + math.min(before, redis.call('ZCARD', sched .. 't:' .. t)) end
  end
end
return position
"""

# The store's scripts by the name it calls them (loaded with SCRIPT LOAD, run with EVALSHA).
STORE = {"create": CREATE, "save": SAVE, "delete": DELETE, "spare": SPARE, "take_over": TAKE_OVER, "epoch": EPOCH,
         "claim_webhook": CLAIM_WEBHOOK, "finish_webhook": FINISH_WEBHOOK, "load": LOAD}
