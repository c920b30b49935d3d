//! Amounts of money as ToolPolicy `commerce` caps and `approval.threshold` write them
//! (`USD 100.00`), parsed one way for `kars validate` and the router.

/// An amount of money: an ISO-4217 code and integer minor units (cents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Money {
    /// The currency code, three upper-case letters.
    pub currency: [u8; 3],
    /// Minor units (two decimals).
    pub minor: u64,
}

impl Money {
    /// Parses `USD 100.00` strictly: a three-letter upper-case code, one space, digits, a dot and
    /// exactly two digits.
    pub fn parse(s: &str) -> Result<Money, String> {
        let bad = || {
            format!(
                "{s:?} is not an amount like \"USD 100.00\" (ISO-4217 code, a space, two decimals)"
            )
        };
        let (code, number) = s.split_once(' ').ok_or_else(bad)?;
        let (units, cents) = number.split_once('.').ok_or_else(bad)?;
        let code: [u8; 3] = code.as_bytes().try_into().map_err(|_| bad())?;
        if !code.iter().all(u8::is_ascii_uppercase)
            || units.is_empty()
            || units.len() > 15
            || cents.len() != 2
            || !units
                .bytes()
                .chain(cents.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let units: u64 = units.parse().map_err(|_| bad())?;
        let cents: u64 = cents.parse().map_err(|_| bad())?;
        Ok(Money {
            currency: code,
            minor: units * 100 + cents,
        })
    }

    /// The currency code as text.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.currency).unwrap_or("???")
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}.{:02}",
            self.code(),
            self.minor / 100,
            self.minor % 100
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_parsed_strictly() {
        assert_eq!(Money::parse("USD 100.00").map(|m| m.minor), Ok(10_000));
        assert_eq!(
            Money::parse("EUR 0.05").map(|m| m.to_string()),
            Ok("EUR 0.05".into())
        );
        for bad in [
            "USD 100",
            "usd 1.00",
            "USD1.00",
            "US 1.00",
            "USD 1.0",
            "USD -1.00",
            "USD 1.000",
            "USD  1.00",
            "USD 1e3.00",
            "",
        ] {
            assert!(Money::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
