//! Money on the wire. Amounts arrive as JSON strings of plain decimal digits
//! (`"100.00"`): never JSON numbers (a float may already have lost a cent),
//! never exponents, signs or more decimals than the currency has. They leave
//! as strings with exactly the currency's minor units, built in SQL by
//! `money_text`, the engine's one definition.

use std::{fmt, str::FromStr};

use rust_decimal::Decimal;
use serde::{de, Deserialize, Deserializer};

use super::error::{Error, Result};

/// A decimal string as sent by a client, checked for shape only; whether its
/// decimals fit the currency is checked by [`Amount::for_currency`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount(Decimal);

impl Amount {
    pub fn value(&self) -> Decimal {
        self.0
    }

    /// Refuses more decimals than `currency` has (`minor_units`), e.g. "1.005" NGN.
    pub fn for_currency(&self, currency: &str, minor_units: i16) -> Result<Decimal> {
        if self.0.scale() > u32::try_from(minor_units).unwrap_or(0) {
            return Err(Error::Unprocessable(format!(
                "amount {} has more decimals than {currency} allows ({minor_units})",
                self.0
            )));
        }
        Ok(self.0)
    }
}

/// Why a string is not an amount; the text is the problem's detail.
#[derive(Debug, PartialEq, Eq)]
pub struct AmountError(&'static str);

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, AmountError> {
        const SHAPE: &str = "amount must be a positive decimal string such as \"100.00\" (digits and at most one point)";
        let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !digits(whole)
            || !digits(fraction)
            || (s.contains('.') && fraction.is_empty())
        {
            return Err(AmountError(SHAPE));
        }
        // numeric(20, 4) holds 16 whole digits.
        if whole.trim_start_matches('0').len() > 16 || fraction.len() > 4 {
            return Err(AmountError(
                "amount is out of range: at most 16 whole digits and 4 decimals",
            ));
        }
        let value = Decimal::from_str(s).map_err(|_| AmountError(SHAPE))?;
        if value.is_zero() {
            return Err(AmountError("amount must be greater than zero"));
        }
        Ok(Amount(value))
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string such as \"100.00\" (not a JSON number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A commission rate from the wire: a decimal string from "0" to "1" with at
/// most six decimals (the column is numeric(7, 6)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Decimal);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a decimal string from \"0\" to \"1\" such as \"0.025\" (not a JSON number)",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                const BAD: &str = "commission_rate must be a decimal string from \"0\" to \"1\" with at most 6 decimals";
                let plain = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.');
                let value = Decimal::from_str(v)
                    .ok()
                    .filter(|_| plain)
                    .ok_or_else(|| E::custom(BAD))?;
                if value > Decimal::ONE || value.scale() > 6 {
                    return Err(E::custom(BAD));
                }
                Ok(Rate(value))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A currency code as sent: three capital letters. Whether the engine knows
/// it is checked against the `currencies` table.
pub fn currency_code(code: &str) -> Result<&str> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(code)
    } else {
        Err(Error::Unprocessable(format!(
            "currency must be an ISO 4217 code of three capital letters such as \"NGN\", not {code:?}"
        )))
    }
}

/// The currency's minor units, or a 422 naming the unknown currency.
pub async fn minor_units(db: impl sqlx::PgExecutor<'_>, currency: &str) -> Result<i16> {
    let code = currency_code(currency)?;
    sqlx::query_scalar!("SELECT minor_units FROM currencies WHERE code = $1", code)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| {
            Error::Unprocessable(format!(
                "unknown currency {code:?}: not an ISO 4217 code this service accepts"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_positive_decimals_only() {
        for good in ["100.00", "1", "0.5", "0001.2500"] {
            assert!(good.parse::<Amount>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "-1",
            "+1",
            "1e3",
            "1.",
            ".5",
            "0",
            "0.00",
            "1,00",
            " 1",
            "NaN",
            "12345678901234567",
        ] {
            assert!(bad.parse::<Amount>().is_err(), "{bad}");
        }
    }

    #[test]
    fn decimals_are_checked_against_the_currency() {
        let amount: Amount = "1.005".parse().unwrap();
        assert!(amount.for_currency("NGN", 2).is_err());
        assert!(amount.for_currency("KWD", 3).is_ok());
        let yen: Amount = "25.0".parse().unwrap();
        assert!(
            yen.for_currency("JPY", 0).is_err(),
            "a trailing zero is still a decimal JPY does not have"
        );
    }
}
