//! Exact money types: prices are integer micro-USD per one million tokens, so one token at price
//! `P` costs exactly `P` picodollars (1e-12 USD) and every amount is an integer: no float ever
//! holds money. Decimal strings are parsed and printed here, digit by digit; what a request costs
//! is billing's rule (`tollgate_billing::pricing`).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("a price must be a non-negative decimal number of USD, got {0:?}")]
    NotADecimal(String),
    #[error("a price has at most 6 decimal places (micro-USD per 1M tokens), got {0:?}")]
    TooPrecise(String),
    #[error("price {0:?} is too large")]
    TooLarge(String),
}

/// Why a decimal string is not an amount at a given scale.
enum DecimalError {
    NotADecimal,
    TooPrecise,
    TooLarge,
}

/// Parses a non-negative decimal such as `"0.22"` into an integer count of `10^-scale` units,
/// digit by digit (never through a float).
fn parse_scaled(text: &str, scale: u32) -> Result<i64, DecimalError> {
    let t = text.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(DecimalError::NotADecimal);
    }
    let frac = frac.trim_end_matches('0');
    let width = scale as usize;
    if frac.len() > width {
        return Err(DecimalError::TooPrecise);
    }
    let whole: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| DecimalError::TooLarge)?
    };
    let unit = 10i64.pow(scale);
    let frac_units: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<width$}")
            .parse()
            .map_err(|_| DecimalError::TooLarge)?
    };
    whole
        .checked_mul(unit)
        .and_then(|w| w.checked_add(frac_units))
        .ok_or(DecimalError::TooLarge)
}

/// Parses a USD amount such as `"0.22"` or `"2.8"` into integer micro-USD.
pub fn parse_usd_micros(text: &str) -> Result<i64, PriceError> {
    parse_scaled(text, 6).map_err(|e| match e {
        DecimalError::NotADecimal => PriceError::NotADecimal(text.to_owned()),
        DecimalError::TooPrecise => PriceError::TooPrecise(text.to_owned()),
        DecimalError::TooLarge => PriceError::TooLarge(text.to_owned()),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("an amount must be a non-negative decimal number of USD, got {0:?}")]
    NotADecimal(String),
    #[error("an amount has at most 12 decimal places (picodollars), got {0:?}")]
    TooPrecise(String),
    #[error("amount {0:?} is too large")]
    TooLarge(String),
}

/// Parses a USD amount such as `"0.05"` (a balance, a top-up, a budget) into exact picodollars.
pub fn parse_usd_picodollars(text: &str) -> Result<i64, AmountError> {
    parse_scaled(text, 12).map_err(|e| match e {
        DecimalError::NotADecimal => AmountError::NotADecimal(text.to_owned()),
        DecimalError::TooPrecise => AmountError::TooPrecise(text.to_owned()),
        DecimalError::TooLarge => AmountError::TooLarge(text.to_owned()),
    })
}

/// Prints `value / 10^scale` as a plain decimal without trailing zeros (`220000, 6` → `"0.22"`).
fn format_scaled(value: i128, scale: u32) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let v = value.unsigned_abs();
    let unit = 10u128.pow(scale);
    let frac = format!("{:0width$}", v % unit, width = scale as usize);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{}", v / unit)
    } else {
        format!("{sign}{}.{frac}", v / unit)
    }
}

/// A price in micro-USD as a USD decimal string (`5000` → `"0.005"`).
pub fn format_micros(micros: i64) -> String {
    format_scaled(micros.into(), 6)
}

/// An amount in picodollars as a USD decimal string (`2640000000` → `"0.00264"`).
pub fn format_picodollars(pico: i64) -> String {
    format_scaled(pico.into(), 12)
}

/// An amount in picodollars as a decimal number of US cents (`2640000000` → `"0.264"`), the unit
/// of OpenAI's legacy usage report.
pub fn format_picodollars_as_cents(pico: i64) -> String {
    format_scaled(pico.into(), 10)
}

/// A decimal string as a JSON number, for display fields. The string is exact and short, so the
/// nearest double prints back as the same digits.
pub fn json_number(decimal: &str) -> serde_json::Value {
    decimal
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prices_exactly() {
        assert_eq!(parse_usd_micros("0.22"), Ok(220_000));
        assert_eq!(parse_usd_micros("0.005"), Ok(5_000));
        assert_eq!(parse_usd_micros("2.8"), Ok(2_800_000));
        assert_eq!(parse_usd_micros("15"), Ok(15_000_000));
        assert_eq!(parse_usd_micros(".5"), Ok(500_000));
        assert_eq!(parse_usd_micros("0.0000010"), Ok(1));
        assert!(matches!(
            parse_usd_micros("0.0000001"),
            Err(PriceError::TooPrecise(_))
        ));
        assert!(matches!(
            parse_usd_micros("-1"),
            Err(PriceError::NotADecimal(_))
        ));
        assert!(matches!(
            parse_usd_micros("1e3"),
            Err(PriceError::NotADecimal(_))
        ));
        assert!(matches!(
            parse_usd_micros("."),
            Err(PriceError::NotADecimal(_))
        ));
    }

    #[test]
    fn parses_amounts_to_the_picodollar() {
        assert_eq!(parse_usd_picodollars("0.05"), Ok(50_000_000_000));
        assert_eq!(parse_usd_picodollars("12"), Ok(12_000_000_000_000));
        assert_eq!(parse_usd_picodollars("0.000000000001"), Ok(1));
        assert_eq!(parse_usd_picodollars("0.1"), Ok(100_000_000_000));
        assert!(matches!(
            parse_usd_picodollars("0.0000000000001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            parse_usd_picodollars("-1"),
            Err(AmountError::NotADecimal(_))
        ));
        assert!(matches!(
            parse_usd_picodollars("1e-3"),
            Err(AmountError::NotADecimal(_))
        ));
        assert!(matches!(
            parse_usd_picodollars("10000000"),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_without_float_noise() {
        assert_eq!(format_micros(220_000), "0.22");
        assert_eq!(format_micros(5_000), "0.005");
        assert_eq!(format_micros(2_800_000), "2.8");
        assert_eq!(format_micros(0), "0");
        assert_eq!(format_picodollars(2_640_000_000), "0.00264");
        assert_eq!(format_picodollars(1), "0.000000000001");
        assert_eq!(format_picodollars_as_cents(2_640_000_000), "0.264");
        assert_eq!(format_picodollars_as_cents(-25_000_000_000), "-2.5");
        assert_eq!(json_number("0.22"), serde_json::json!(0.22));
    }
}
