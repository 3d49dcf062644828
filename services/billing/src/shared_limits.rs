//! Limits shared by every gateway process through Redis, used when `[redis]` is configured: each
//! key's requests-per-minute window (GCRA, the algorithm governor runs in memory, with the same
//! burst: the tier's RPM) and its monthly request counter. One Lua script checks both and counts
//! the request atomically inside Redis, so N replicas admit exactly what one process would; the
//! clock is Redis's own (`TIME`), so replicas' clocks do not matter.
//!
//! The monthly counter starts from the key's ledger rows of that month (`SET NX`), read by the
//! process that first finds it missing, and lives 40 days; if Redis loses it (a flush, a
//! failover without persistence), the next admission re-seeds it from the ledger the same way,
//! never from a count the process loaded earlier.

use redis::Script;
use redis::aio::ConnectionManager;

use crate::clock::Period;
use crate::config::RedisConfig;
use crate::error::BillingError;
use crate::limits::KeyLimits;

/// Seconds a monthly counter outlives its creation: longer than any month.
const COUNTER_TTL_SECS: u64 = 40 * 24 * 3600;

/// KEYS: rpm state, monthly counter. ARGV: rpm, monthly limit, counter seed (`-1`: not read
/// yet), counter TTL (s). Returns {0, count} when admitted, {1, count} when the month is used up,
/// {2, wait_ms} when the per-minute window is full, {3, 0} when the counter is missing and no seed
/// was given (nothing counted: read the ledger and call again). Times in microseconds (exact in
/// Lua doubles up to 2^53).
const ADMIT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rpm = tonumber(ARGV[1])
local interval = math.floor(60000000 / rpm)
local burst = interval * rpm
if redis.call('EXISTS', KEYS[2]) == 0 then
  if tonumber(ARGV[3]) < 0 then
    return {3, 0}
  end
  redis.call('SET', KEYS[2], ARGV[3], 'EX', tonumber(ARGV[4]))
end
local used = tonumber(redis.call('GET', KEYS[2]))
if used >= tonumber(ARGV[2]) then
  return {1, used}
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > burst then
  return {2, math.ceil((new_tat - now - burst) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(burst / 1000) + 1000)
redis.call('INCR', KEYS[2])
return {0, used + 1}
";

/// KEYS: monthly counter. Gives one request back, never below zero.
const RELEASE_LUA: &str = r"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v > 0 then redis.call('DECR', KEYS[1]) end
return 0
";

/// What [`SharedLimits::admit`] did with a request its limits allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Counted,
    /// The month's counter is missing (first use, or Redis lost it): call again with the seed.
    NeedsSeed,
}

/// The Redis-backed limits. Cheap to clone (one multiplexed, reconnecting connection).
#[derive(Clone)]
pub struct SharedLimits {
    conn: ConnectionManager,
    prefix: String,
    admit: Script,
    release: Script,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_error(err: redis::RedisError) -> BillingError {
    BillingError::SharedLimits(err.to_string())
}

impl SharedLimits {
    /// Connects to the configured Redis (and checks it answers).
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, BillingError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(redis_error)?;
        let mut conn = ConnectionManager::new(client).await.map_err(redis_error)?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(Self {
            conn,
            prefix: cfg.key_prefix.clone(),
            admit: Script::new(ADMIT_LUA),
            release: Script::new(RELEASE_LUA),
        })
    }

    /// Whether Redis answers (readiness).
    pub async fn ping(&self) -> Result<(), BillingError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(redis_error)
    }

    fn rpm_key(&self, key_id: &str) -> String {
        format!("{}:rpm:{key_id}", self.prefix)
    }

    fn month_key(&self, key_id: &str, period: Period) -> String {
        format!("{}:month:{}:{key_id}", self.prefix, period.label())
    }

    /// Counts one request of `key_id` in `period` if both its tier's limits allow it. `seed` is
    /// the key's ledger count for the month, used if Redis has no counter; `None` (not read yet):
    /// answers [`Slot::NeedsSeed`] instead of counting when the counter is missing, so the
    /// ledger is read only then.
    pub async fn admit(
        &self,
        key_id: &str,
        limits: &KeyLimits,
        period: Period,
        seed: Option<u64>,
    ) -> Result<Slot, BillingError> {
        let (rpm, monthly) = (limits.rpm_limit().get(), limits.monthly_limit());
        let seed = seed.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let (verdict, _value): (i64, i64) = self
            .admit
            .key(self.rpm_key(key_id))
            .key(self.month_key(key_id, period))
            .arg(rpm)
            .arg(monthly)
            .arg(seed)
            .arg(COUNTER_TTL_SECS)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        match verdict {
            0 => Ok(Slot::Counted),
            1 => Err(limits.quota_exceeded()),
            3 => Ok(Slot::NeedsSeed),
            _ => Err(limits.rate_limited()),
        }
    }

    /// Gives back the monthly slot of a request admitted in `period` and then refused (no money).
    pub async fn release(&self, key_id: &str, period: Period) -> Result<(), BillingError> {
        let _: i64 = self
            .release
            .key(self.month_key(key_id, period))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// Requests counted for `key_id` in `period`, if Redis has a counter.
    pub async fn used(&self, key_id: &str, period: Period) -> Result<Option<u64>, BillingError> {
        redis::cmd("GET")
            .arg(self.month_key(key_id, period))
            .query_async::<Option<u64>>(&mut self.conn.clone())
            .await
            .map_err(redis_error)
    }
}
