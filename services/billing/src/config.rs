//! The billing part of the user-facing config: `[[tiers]]` and `[database]`, parsed with serde and
//! validated into [`Tiers`], a runtime type that cannot hold an invalid tier.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use serde::Deserialize;

/// One `[[tiers]]` entry as written in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    /// Requests per minute per key (also the burst size).
    pub rpm: u32,
    /// Admitted requests per key per UTC calendar month.
    pub monthly_requests: u64,
    /// The models this tier's keys may call, by catalogue model id or alias id. A model id allows
    /// the model under every alias that resolves to it; an alias id allows that alias only.
    /// Absent: every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,

    /// Streams a key of this tier may have open at once; over it a new stream is refused with
    /// 429 `rate_limit_exceeded`. Absent: unlimited. Counted per billing process (see
    /// [`crate::streams`]).
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
}

/// The `[database]` section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` or `postgres://...`.
    #[serde(default = "default_database_url")]
    pub url: String,
    /// What a committed ledger batch survives (see [`Durability`]).
    #[serde(default)]
    pub durability: Durability,
}

/// What a committed write (a ledger batch, a key change) survives. Either way a settled row
/// survives `kill -9` of the gateway: the commit has reached the database before the request is
/// answered. The choice is whether each commit also waits until the disk has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Each commit waits for the disk (fsync): it survives power loss and an OS crash too.
    /// SQLite `synchronous = FULL`; PostgreSQL `synchronous_commit = on`.
    #[default]
    PowerLoss,
    /// Each commit reaches the database process or the OS, not necessarily the disk: it survives
    /// the gateway's crash, while power loss or an OS (or PostgreSQL server) crash can lose the last
    /// fraction of a second of commits. SQLite `synchronous = NORMAL` (WAL); PostgreSQL
    /// `synchronous_commit = off`.
    ProcessCrash,
}

impl DatabaseConfig {
    /// The database at `url`, with the default durability.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            durability: Durability::default(),
        }
    }
}

/// The embedded default store of monolithic mode.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/tollgate.db";

fn default_database_url() -> String {
    DEFAULT_DATABASE_URL.to_owned()
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self::at(default_database_url())
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url_password(&self.url))
            .field("durability", &self.durability)
            .finish()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`: a database URL is safe to log
/// only without its password.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// The `[redis]` section: when present, requests-per-minute windows and monthly request counters
/// live in this Redis, shared by every gateway process that names it (see [`crate::shared_limits`]).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every Redis key Tollgate writes, so several deployments can share one Redis.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
}

fn default_redis_key_prefix() -> String {
    "tollgate".to_owned()
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url_password(&self.url))
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// A validated tier: a non-empty unique name and an RPM of at least 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    pub rpm: NonZeroU32,
    pub monthly_requests: u64,
    /// The allow-list (see [`TierConfig::models`]); `None` allows every model.
    pub models: Option<Arc<[String]>>,
    /// Streams a key may have open at once (see [`TierConfig::max_concurrent_streams`]).
    pub max_concurrent_streams: Option<NonZeroU32>,
}

impl Tier {
    /// Whether a key of this tier may call `requested` (the id the caller sent), which resolved to
    /// the catalogue model `model_id`.
    pub fn allows(&self, requested: &str, model_id: &str) -> bool {
        self.models.as_ref().is_none_or(|allowed| {
            allowed
                .iter()
                .any(|m| m == requested || (!model_id.is_empty() && m == model_id))
        })
    }
}

/// Why a `[[tiers]]` list was rejected. Messages name the offending field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("tiers[{index}].name must not be empty")]
    EmptyTierName { index: usize },
    #[error("tiers[{index}].name {name:?} is already used by tiers[{first}]")]
    DuplicateTierName {
        index: usize,
        first: usize,
        name: String,
    },
    #[error("tiers[{index}].rpm must be at least 1")]
    ZeroRpm { index: usize },
    #[error("tiers[{index}].models must not be empty; leave it out to allow every model")]
    EmptyModelList { index: usize },
    #[error("tiers[{index}].max_concurrent_streams must be at least 1; leave it out for no limit")]
    ZeroStreams { index: usize },
}

/// The configured tiers, validated. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tiers {
    tiers: Arc<[Arc<Tier>]>,
}

impl Tiers {
    pub fn new(configs: Vec<TierConfig>) -> Result<Self, ConfigError> {
        let mut tiers: Vec<Arc<Tier>> = Vec::with_capacity(configs.len());
        for (index, cfg) in configs.into_iter().enumerate() {
            if cfg.name.trim().is_empty() {
                return Err(ConfigError::EmptyTierName { index });
            }
            if let Some(first) = tiers.iter().position(|t| t.name == cfg.name) {
                return Err(ConfigError::DuplicateTierName {
                    index,
                    first,
                    name: cfg.name,
                });
            }
            let rpm = NonZeroU32::new(cfg.rpm).ok_or(ConfigError::ZeroRpm { index })?;
            if cfg.models.as_ref().is_some_and(Vec::is_empty) {
                return Err(ConfigError::EmptyModelList { index });
            }
            let max_concurrent_streams = match cfg.max_concurrent_streams {
                None => None,
                Some(n) => Some(NonZeroU32::new(n).ok_or(ConfigError::ZeroStreams { index })?),
            };
            tiers.push(Arc::new(Tier {
                name: cfg.name,
                rpm,
                monthly_requests: cfg.monthly_requests,
                models: cfg.models.map(Into::into),
                max_concurrent_streams,
            }));
        }
        Ok(Self {
            tiers: tiers.into(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tier>> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// The tier names in config order (for error messages and CLI help).
    pub fn names(&self) -> Vec<String> {
        self.tiers.iter().map(|t| t.name.clone()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tier> {
        self.tiers.iter().map(|t| t.as_ref())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn tier(name: &str, rpm: u32) -> TierConfig {
        TierConfig {
            name: name.to_owned(),
            rpm,
            monthly_requests: 100,
            models: None,
            max_concurrent_streams: None,
        }
    }

    #[test]
    fn allow_lists_match_models_and_aliases() {
        let mut cfg = tier("flash", 10);
        cfg.models = Some(vec!["deepseek-v4-flash".into(), "gpt-4o".into()]);
        let tiers = Tiers::new(vec![cfg, tier("all", 10)]).unwrap();
        let flash = tiers.get("flash").unwrap();
        // A listed model is allowed directly and through any alias resolving to it.
        assert!(flash.allows("deepseek-v4-flash", "deepseek-v4-flash"));
        assert!(flash.allows("deepseek-chat", "deepseek-v4-flash"));
        // A listed alias allows that alias, not its target under other names.
        assert!(flash.allows("gpt-4o", "deepseek-v4-pro"));
        assert!(!flash.allows("deepseek-v4-pro", "deepseek-v4-pro"));
        assert!(!flash.allows("deepseek-reasoner", "deepseek-v4-pro"));
        assert!(tiers.get("all").unwrap().allows("anything", "else"));

        let mut empty = tier("none", 10);
        empty.models = Some(vec![]);
        assert_eq!(
            Tiers::new(vec![empty]).unwrap_err().to_string(),
            "tiers[0].models must not be empty; leave it out to allow every model"
        );
    }

    #[test]
    fn accepts_valid_tiers() {
        let tiers = Tiers::new(vec![tier("basic", 10), tier("pro", 30)]).unwrap();
        assert_eq!(tiers.names(), ["basic", "pro"]);
        assert_eq!(tiers.get("pro").unwrap().rpm.get(), 30);
        assert!(tiers.get("gold").is_none());
    }

    #[test]
    fn rejects_invalid_tiers_naming_the_field() {
        let err = Tiers::new(vec![tier("basic", 10), tier("pro", 0)]).unwrap_err();
        assert_eq!(err.to_string(), "tiers[1].rpm must be at least 1");
        let err = Tiers::new(vec![tier(" ", 10)]).unwrap_err();
        assert_eq!(err.to_string(), "tiers[0].name must not be empty");
        let err = Tiers::new(vec![tier("pro", 1), tier("x", 1), tier("pro", 2)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tiers[2].name \"pro\" is already used by tiers[0]"
        );
    }

    #[test]
    fn tier_config_rejects_unknown_fields() {
        let ok: TierConfig =
            serde_json::from_str(r#"{"name":"pro","rpm":30,"monthly_requests":3000}"#).unwrap();
        assert_eq!(ok.monthly_requests, 3000);
        let err = serde_json::from_str::<TierConfig>(
            r#"{"name":"pro","rpm":30,"monthly_requests":3000,"burst":5}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("burst"), "{err}");
    }

    #[test]
    fn database_url_defaults_and_redacts() {
        let cfg: DatabaseConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg.url, "sqlite://data/tollgate.db");
        let cfg = DatabaseConfig::at("postgres://tollgate:hunter2@db:5432/tollgate");
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("postgres://tollgate:***@db:5432/tollgate"));
        assert_eq!(
            redact_url_password("sqlite://data/x.db"),
            "sqlite://data/x.db"
        );
    }
}
