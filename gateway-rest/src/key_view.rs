//! How an operator sees a key, in one place for REST `/admin` and the `tollgate keys` CLI: the
//! JSON object made from the Admin service's `ManagedKey` (times as Unix seconds over REST and as
//! RFC 3339 on the CLI; every amount both as an exact USD string and as integer picodollars), and
//! the CLI's `keys list` table.

use chrono::DateTime;
use serde_json::{Value, json};
use tollgate::money::format_picodollars;
use tollgate::v1::ManagedKey;

/// How times are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// Integers (REST, like the rest of the OpenAI-style API).
    UnixSeconds,
    /// `2027-01-01T00:00:00+00:00` strings (the CLI, read by people and scripts alike).
    Rfc3339,
}

impl Times {
    fn render(self, secs: i64) -> Value {
        match (self, DateTime::from_timestamp(secs, 0)) {
            (Self::Rfc3339, Some(at)) => Value::String(at.to_rfc3339()),
            _ => Value::from(secs),
        }
    }
}

/// The key as a JSON object.
pub fn key_json(key: &ManagedKey, times: Times) -> Value {
    let time = |secs: Option<i64>| secs.map_or(Value::Null, |s| times.render(s));
    let usd = |pico: Option<i64>| pico.map(format_picodollars);
    json!({
        "object": "api_key",
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "tier": key.tier,
        "status": key.status,
        "created_at": times.render(key.created_at),
        "revoked_at": time(key.revoked_at),
        "expires_at": time(key.expires_at),
        "rpm_override": key.rpm_override,
        "monthly_requests_override": key.monthly_requests_override,
        "rpm_limit": key.rpm_limit,
        "monthly_limit": key.monthly_limit,
        "balance_usd": usd(key.balance_picodollars),
        "balance_picodollars": key.balance_picodollars,
        "monthly_budget_usd": usd(key.monthly_budget_picodollars),
        "monthly_budget_picodollars": key.monthly_budget_picodollars,
        "reserved_usd": format_picodollars(key.reserved_picodollars),
        "reserved_picodollars": key.reserved_picodollars,
        "spend_month_usd": format_picodollars(key.spend_month_picodollars),
        "spend_month_picodollars": key.spend_month_picodollars,
        "spend_total_usd": format_picodollars(key.spend_total_picodollars),
        "spend_total_picodollars": key.spend_total_picodollars,
        "credited_total_usd": format_picodollars(key.credited_total_picodollars),
        "credited_total_picodollars": key.credited_total_picodollars,
        "written_off_usd": format_picodollars(key.written_off_picodollars),
        "written_off_picodollars": key.written_off_picodollars,
        "over_reserved_usd": format_picodollars(key.over_reserved_picodollars),
        "over_reserved_picodollars": key.over_reserved_picodollars,
        "over_reserved_count": key.over_reserved_count,
        "period": key.period,
        "requests_month": key.requests_month,
        "requests_total": key.requests_total,
    })
}

/// `keys list`: a header and one line per key. Overrides are shown; `-` means the tier's limit
/// (or no expiry).
pub fn key_table(keys: &[ManagedKey]) -> String {
    let mut table = format!(
        "{:<36}  {:<16}  {:<12}  {:<8}  {:<20}  {:<6}  {:<10}  {:>14}  {:>14}  NAME\n",
        "ID", "PREFIX", "TIER", "STATUS", "EXPIRES", "RPM", "MONTHLY", "BALANCE_USD", "SPEND_MONTH"
    );
    let or_tier = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    for k in keys {
        let expires = k
            .expires_at
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        table.push_str(&format!(
            "{:<36}  {:<16}  {:<12}  {:<8}  {:<20}  {:<6}  {:<10}  {:>14}  {:>14}  {}\n",
            k.id,
            k.prefix,
            k.tier,
            k.status,
            or_tier(expires),
            or_tier(k.rpm_override.map(|r| r.to_string())),
            or_tier(k.monthly_requests_override.map(|m| m.to_string())),
            k.balance_picodollars
                .map_or_else(|| "unlimited".to_owned(), format_picodollars),
            format_picodollars(k.spend_month_picodollars),
            k.name
        ));
    }
    table
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key() -> ManagedKey {
        ManagedKey {
            id: "0190-key".into(),
            name: "ci".into(),
            prefix: "sk-AbCd1234E".into(),
            tier: "pro".into(),
            created_at: 1_893_456_000,
            expires_at: Some(1_893_542_400),
            rpm_override: Some(5),
            status: "active".into(),
            balance_picodollars: Some(1_250_000_000_000),
            spend_month_picodollars: 12,
            ..Default::default()
        }
    }

    #[test]
    fn one_object_two_time_formats() {
        let rest = key_json(&key(), Times::UnixSeconds);
        let cli = key_json(&key(), Times::Rfc3339);
        assert_eq!(rest["expires_at"], 1_893_542_400);
        assert_eq!(cli["expires_at"], "2030-01-02T00:00:00+00:00");
        assert_eq!(cli["created_at"], "2030-01-01T00:00:00+00:00");
        assert_eq!(rest["revoked_at"], Value::Null);
        for view in [&rest, &cli] {
            assert_eq!(view["balance_usd"], "1.25");
            assert_eq!(view["balance_picodollars"], 1_250_000_000_000_i64);
            assert_eq!(view["monthly_budget_usd"], Value::Null);
            assert_eq!(view["spend_month_usd"], "0.000000000012");
        }
        // Nothing but the times differs.
        let (mut rest, mut cli) = (rest, cli);
        for field in ["created_at", "expires_at"] {
            rest[field] = Value::Null;
            cli[field] = Value::Null;
        }
        assert_eq!(rest, cli);
    }

    #[test]
    fn the_table_shows_overrides_and_money() {
        let table = key_table(&[key()]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID "));
        let row: Vec<_> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            vec![
                "0190-key",
                "sk-AbCd1234E",
                "pro",
                "active",
                "2030-01-02T00:00:00Z",
                "5",
                "-",
                "1.25",
                "0.000000000012",
                "ci"
            ]
        );
    }
}
