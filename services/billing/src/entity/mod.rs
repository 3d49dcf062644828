//! The sea-orm entities of the billing tables. The schema itself lives in [`crate::migration`].

pub mod api_key;
pub mod key_account;
pub mod usage_ledger;
