//! API keys, one concern a file: [`secret`] (generation, hashing, redaction), [`store`] (the
//! admin operations on `api_keys`), [`cache`] (the hot path's [`KeyCache`]) and [`refresh`] (the
//! poll that evicts keys other processes changed).

pub mod cache;
pub mod refresh;
pub mod secret;
pub mod store;

pub use cache::{ActiveKey, Authenticated, KeyCache};
pub use refresh::{KeyRefresher, record_change};
pub use secret::{
    PREFIX_LEN, SECRET_RANDOM_LEN, SECRET_SCHEME, SecretKey, hash_secret, is_well_formed,
};
pub use store::{
    KeyRecord, KeyUpdate, NewKey, create_key, create_key_with, find_key, list_keys, revoke_key,
    rotate_key, top_up_key, update_key,
};
