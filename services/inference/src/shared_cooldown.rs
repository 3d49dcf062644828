//! Deployment cooldowns shared by every gateway replica through Redis, used when `[redis]` is
//! configured: a replica that cools a deployment down publishes it, the others stop choosing it
//! until it ends, and one probe among all replicas decides whether it takes traffic again.
//!
//! What lives in Redis (under `[redis] key_prefix`): one sorted set, `{prefix}:cooldown`, whose
//! members are `model\ndeployment` scored by the end of their cooldown (Redis's own clock, in
//! ms, so replicas' clocks do not matter), and per deployment a probe key,
//! `{prefix}:probe:model\ndeployment`: absent (nobody probes), the lease of the replica probing
//! (`SET NX PX` inside a script), or `healthy` (the last probe succeeded).
//!
//! The hot path never waits for Redis: each replica reads the whole set every
//! `[routing] shared_refresh_ms` in a task of its own (one round trip, whatever the traffic) and
//! folds it into its in-process health; a request only reaches Redis when the deployment it
//! chose is due for its probe. Redis unreachable: every call here answers an error within
//! [`REDIS_TIMEOUT`] and the router falls back to its own in-process state (fail-open): cooldowns
//! go on being learnt per replica, each replica probes for itself, no request fails because
//! Redis is down.

use std::{sync::Arc, time::Duration};

use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// The longest a Redis call may take before the router goes on without it.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// KEYS: cooldown set, probe key. ARGV: member, cooldown (ms). The deployment is out until now +
/// cooldown; a probe lease or `healthy` mark of an earlier round is dropped.
const COOL_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%d', untl), ARGV[1])
local keep = tonumber(ARGV[2]) + 60000
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
redis.call('DEL', KEYS[2])
return 0
";

/// KEYS: cooldown set. Drops the cooldowns that are over; returns the others as
/// {member, ms left, ...}.
const READ_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local r = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #r, 2 do
  out[#out + 1] = r[i]
  out[#out + 1] = string.format('%d', tonumber(r[i + 1]) - now)
end
return out
";

/// KEYS: cooldown set, probe key. ARGV: member, lease (ms), lease owner. Returns {0, ms left}
/// while cooling down, {1, 0} when the caller holds the probe lease now, {2, 0} when the last
/// probe succeeded, {3, ms} while another probe holds the lease.
const CLAIM_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) > now then return {0, tonumber(s) - now} end
local v = redis.call('GET', KEYS[2])
if not v then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', tonumber(ARGV[2]))
  return {1, 0}
end
if v == 'healthy' then return {2, 0} end
if v == ARGV[3] then return {1, 0} end
return {3, redis.call('PTTL', KEYS[2])}
";

/// KEYS: cooldown set, probe key. ARGV: member, how long the mark stays (ms). The probe
/// succeeded: the cooldown is over everywhere.
const HEALTHY_LUA: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], 'healthy', 'PX', tonumber(ARGV[2]))
return 0
";

/// KEYS: probe key. ARGV: lease owner. A probe that ended without a verdict gives its lease back.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// What Redis says about a deployment due for its probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Another replica cooled it down again: out for this long.
    Cooling(Duration),
    /// This replica holds the probe lease: its request is the probe.
    Probe,
    /// The last probe (another replica's) succeeded: it takes traffic.
    Healthy,
    /// Another replica's probe is in flight.
    Busy,
}

/// The Redis side of the shared cooldown. Cheap to clone (one multiplexed, reconnecting
/// connection).
#[derive(Clone)]
pub struct SharedCooldown {
    conn: ConnectionManager,
    prefix: String,
    /// Identifies this replica's probe leases.
    owner: String,
    scripts: Arc<Scripts>,
}

/// The scripts, hashed once (each call sends `EVALSHA`, the body only if Redis lacks it).
struct Scripts {
    cool: Script,
    read: Script,
    claim: Script,
    healthy: Script,
    release: Script,
}

impl std::fmt::Debug for SharedCooldown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCooldown")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A failed Redis call (or one slower than [`REDIS_TIMEOUT`]).
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct SharedCooldownError(String);

impl From<redis::RedisError> for SharedCooldownError {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

fn member(model_id: &str, deployment: &str) -> String {
    format!("{model_id}\n{deployment}")
}

impl SharedCooldown {
    /// A lazy, reconnecting connection to `url`: the process starts (and serves from its own
    /// state) while Redis is unreachable. Fails only for a URL that cannot be a Redis URL.
    pub fn connect(url: &str, key_prefix: &str) -> Result<Self, SharedCooldownError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            prefix: key_prefix.to_owned(),
            owner: uuid::Uuid::now_v7().simple().to_string(),
            scripts: Arc::new(Scripts {
                cool: Script::new(COOL_LUA),
                read: Script::new(READ_LUA),
                claim: Script::new(CLAIM_LUA),
                healthy: Script::new(HEALTHY_LUA),
                release: Script::new(RELEASE_LUA),
            }),
        })
    }

    fn set_key(&self) -> String {
        format!("{}:cooldown", self.prefix)
    }

    fn probe_key(&self, member: &str) -> String {
        format!("{}:probe:{member}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, SharedCooldownError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(REDIS_TIMEOUT * 2, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| SharedCooldownError("timed out".to_owned()))?
            .map_err(SharedCooldownError::from)
    }

    /// Publishes that `deployment` of `model_id` is out for `cooldown`.
    pub async fn cool(
        &self,
        model_id: &str,
        deployment: &str,
        cooldown: Duration,
    ) -> Result<(), SharedCooldownError> {
        let member = member(model_id, deployment);
        let mut invocation = self.scripts.cool.prepare_invoke();
        invocation
            .key(self.set_key())
            .key(self.probe_key(&member))
            .arg(&member)
            .arg(millis(cooldown));
        self.run::<i64>(invocation).await.map(drop)
    }

    /// Every deployment cooling down now, by model and deployment, with the time left.
    pub async fn cooling(&self) -> Result<Vec<(String, String, Duration)>, SharedCooldownError> {
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation.key(self.set_key());
        let flat: Vec<String> = self.run(invocation).await?;
        Ok(flat
            .chunks_exact(2)
            .filter_map(|pair| {
                let (model_id, deployment) = pair[0].split_once('\n')?;
                let left = pair[1].parse::<u64>().ok()?;
                Some((
                    model_id.to_owned(),
                    deployment.to_owned(),
                    Duration::from_millis(left),
                ))
            })
            .collect())
    }

    /// Asks for the probe of a deployment whose cooldown is over here; the lease lasts `lease`
    /// unless resolved sooner (a replica that dies while probing holds it no longer).
    pub async fn claim_probe(
        &self,
        model_id: &str,
        deployment: &str,
        lease: Duration,
    ) -> Result<Claim, SharedCooldownError> {
        let member = member(model_id, deployment);
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.set_key())
            .key(self.probe_key(&member))
            .arg(&member)
            .arg(millis(lease))
            .arg(&self.owner);
        let (verdict, ms): (i64, i64) = self.run(invocation).await?;
        let ms = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        Ok(match verdict {
            0 => Claim::Cooling(ms),
            1 => Claim::Probe,
            2 => Claim::Healthy,
            _ => Claim::Busy,
        })
    }

    /// The probe succeeded: the cooldown is over for every replica; the mark stays for `keep`,
    /// so replicas still waiting for the verdict learn it without probing again.
    pub async fn healthy(
        &self,
        model_id: &str,
        deployment: &str,
        keep: Duration,
    ) -> Result<(), SharedCooldownError> {
        let member = member(model_id, deployment);
        let mut invocation = self.scripts.healthy.prepare_invoke();
        invocation
            .key(self.set_key())
            .key(self.probe_key(&member))
            .arg(&member)
            .arg(millis(keep).max(1));
        self.run::<i64>(invocation).await.map(drop)
    }

    /// A probe of this replica ended without a verdict (its request was cut): the next one may
    /// probe.
    pub async fn release_probe(
        &self,
        model_id: &str,
        deployment: &str,
    ) -> Result<(), SharedCooldownError> {
        let member = member(model_id, deployment);
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation.key(self.probe_key(&member)).arg(&self.owner);
        self.run::<i64>(invocation).await.map(drop)
    }
}

/// A duration as the whole milliseconds Redis's `PX` and the scripts take.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
