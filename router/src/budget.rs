//! Token budgets for the inference proxy: a per-request cap checked before any upstream call,
//! and daily and monthly UTC budgets kept in a file so they survive restarts.
//!
//! Usage is recorded by request id: recording the same id again (a client retry, or the
//! proxy's own retry on a fallback upstream) counts once. The ledger file is replaced
//! atomically (write a temporary file, fsync it, rename, fsync the directory), so a crash
//! leaves either the old or the new ledger, never a torn one. Day and month roll over at
//! 00:00 UTC by the router's clock.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kars_contract::time::utc_day_and_month;
use serde::{Deserialize, Serialize};

/// The limits (from `InferencePolicy.spec.tokenBudget`); `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest `max_tokens` one request may ask for.
    pub per_request_tokens: Option<u64>,
    /// Tokens per UTC day.
    pub daily_tokens: Option<u64>,
    /// Tokens per UTC month.
    pub monthly_tokens: Option<u64>,
}

/// Why a request is refused before it reaches an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum BudgetRefusal {
    /// The request asks for more than the per-request cap (or does not say and there is one).
    PerRequestCap {
        /// What it asked for.
        requested: Option<u64>,
        /// The cap.
        cap: u64,
    },
    /// Today's budget cannot cover the request (used + the request's cap > budget).
    DailyExhausted {
        /// Used today.
        used: u64,
        /// The budget.
        limit: u64,
    },
    /// This month's budget cannot cover the request.
    MonthlyExhausted {
        /// Used this month.
        used: u64,
        /// The budget.
        limit: u64,
    },
}

/// How many request ids are remembered for deduplication.
const REMEMBERED_IDS: usize = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ledger {
    /// `YYYY-MM-DD` of `day_used`.
    day: String,
    day_used: u64,
    /// `YYYY-MM` of `month_used`.
    month: String,
    month_used: u64,
    /// Recently counted request ids, oldest first.
    counted: VecDeque<String>,
}

/// Errors of the ledger file.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// Reading or writing the ledger.
    #[error("{path}: {message}")]
    Io {
        /// The ledger file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// The persisted budget ledger of one sandbox (the limits come with each request, from the
/// inference policy in force).
pub struct Budget {
    path: PathBuf,
    ledger: Mutex<Ledger>,
}

impl Budget {
    /// Opens (or starts) the ledger at `path`. An unreadable ledger is an error, not a reset:
    /// starting from zero would hand out the budget twice.
    pub fn open(path: &Path) -> Result<Budget, BudgetError> {
        let io = |message: String| BudgetError::Io {
            path: path.display().to_string(),
            message,
        };
        let ledger = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io(format!("not a budget ledger ({e}); move it aside to reset")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
            Err(e) => return Err(io(e.to_string())),
        };
        Ok(Budget {
            path: path.to_path_buf(),
            ledger: Mutex::new(ledger),
        })
    }

    fn rolled(ledger: &mut Ledger, now: i64) {
        let (day, month) = utc_day_and_month(now);
        if ledger.day != day {
            ledger.day = day;
            ledger.day_used = 0;
        }
        if ledger.month != month {
            ledger.month = month;
            ledger.month_used = 0;
        }
    }

    /// Checks a request asking for up to `max_tokens` at `now` (Unix seconds) against
    /// `limits`: refused when it is over the per-request cap, or when what is used plus
    /// `max_tokens` would pass the daily or monthly budget (so a budget is never overshot by
    /// more than a request's reported usage beyond its own cap). Called before any upstream
    /// call; a refusal costs nothing.
    pub fn admit(
        &self,
        limits: &Limits,
        max_tokens: Option<u64>,
        now: i64,
    ) -> Result<(), BudgetRefusal> {
        if let Some(cap) = limits.per_request_tokens
            && max_tokens.is_none_or(|m| m > cap)
        {
            return Err(BudgetRefusal::PerRequestCap {
                requested: max_tokens,
                cap,
            });
        }
        let mut l = self
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::rolled(&mut l, now);
        let asked = max_tokens.unwrap_or(0);
        if let Some(limit) = limits.daily_tokens
            && (l.day_used >= limit || l.day_used.saturating_add(asked) > limit)
        {
            return Err(BudgetRefusal::DailyExhausted {
                used: l.day_used,
                limit,
            });
        }
        if let Some(limit) = limits.monthly_tokens
            && (l.month_used >= limit || l.month_used.saturating_add(asked) > limit)
        {
            return Err(BudgetRefusal::MonthlyExhausted {
                used: l.month_used,
                limit,
            });
        }
        Ok(())
    }

    /// Records `tokens` used by `request_id` at `now` and persists the ledger. Returns false
    /// (and changes nothing) when that id was already counted.
    pub fn record(&self, request_id: &str, tokens: u64, now: i64) -> Result<bool, BudgetError> {
        let mut l = self
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.counted.iter().any(|id| id == request_id) {
            return Ok(false);
        }
        Self::rolled(&mut l, now);
        l.day_used = l.day_used.saturating_add(tokens);
        l.month_used = l.month_used.saturating_add(tokens);
        l.counted.push_back(request_id.to_string());
        while l.counted.len() > REMEMBERED_IDS {
            l.counted.pop_front();
        }
        self.persist(&l)?;
        Ok(true)
    }

    /// `(used today, used this month)` at `now`.
    pub fn used(&self, now: i64) -> (u64, u64) {
        let mut l = self
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::rolled(&mut l, now);
        (l.day_used, l.month_used)
    }

    fn persist(&self, l: &Ledger) -> Result<(), BudgetError> {
        let io = |e: std::io::Error| BudgetError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let bytes = serde_json::to_vec(l).map_err(|e| io(std::io::Error::other(e)))?;
        crate::state_file::replace(&self.path, &bytes).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_24: i64 = 1_795_478_400; // 2026-11-24T00:00:00Z

    fn limits() -> Limits {
        Limits {
            per_request_tokens: Some(1_000),
            daily_tokens: Some(2_000),
            monthly_tokens: Some(5_000),
        }
    }

    #[test]
    fn calendar() {
        assert_eq!(
            utc_day_and_month(NOV_24),
            ("2026-11-24".into(), "2026-11".into())
        );
        assert_eq!(
            utc_day_and_month(NOV_24 - 1),
            ("2026-11-23".into(), "2026-11".into())
        );
        assert_eq!(
            utc_day_and_month(0),
            ("1970-01-01".into(), "1970-01".into())
        );
        assert_eq!(
            utc_day_and_month(951_782_400),
            ("2000-02-29".into(), "2000-02".into())
        );
    }

    #[test]
    fn caps_are_checked_before_the_call() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = Budget::open(&dir.path().join("budget.json")).expect("open");
        assert!(b.admit(&limits(), Some(1_000), NOV_24).is_ok());
        assert!(matches!(
            b.admit(&limits(), Some(1_001), NOV_24),
            Err(BudgetRefusal::PerRequestCap { .. })
        ));
        assert!(
            matches!(
                b.admit(&limits(), None, NOV_24),
                Err(BudgetRefusal::PerRequestCap { .. })
            ),
            "with a cap, a request must say how much it may use"
        );
    }

    #[test]
    fn budgets_survive_restarts_roll_over_at_utc_midnight_and_never_double_count() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("budget.json");
        let b = Budget::open(&path).expect("open");
        assert!(b.record("req-1", 900, NOV_24 + 10).expect("rec"));
        assert!(
            !b.record("req-1", 900, NOV_24 + 11).expect("rec"),
            "a retry counts once"
        );
        b.record("req-2", 1_100, NOV_24 + 12).expect("rec");
        assert!(matches!(
            b.admit(&limits(), Some(10), NOV_24 + 13),
            Err(BudgetRefusal::DailyExhausted {
                used: 2_000,
                limit: 2_000
            })
        ));
        drop(b);
        // A restart keeps the ledger.
        let b = Budget::open(&path).expect("reopen");
        assert_eq!(b.used(NOV_24 + 14), (2_000, 2_000));
        assert!(b.admit(&limits(), Some(10), NOV_24 + 14).is_err());
        assert!(
            !b.record("req-1", 900, NOV_24 + 15).expect("rec"),
            "ids survive too"
        );
        // The next UTC day starts a new daily budget; the month goes on.
        let next_day = NOV_24 + 86_400;
        assert!(b.admit(&limits(), Some(10), next_day).is_ok());
        b.record("req-3", 2_000, next_day).expect("rec");
        b.record("req-4", 1_000, next_day + 1).expect("rec");
        assert!(matches!(
            b.admit(&limits(), Some(10), next_day + 2),
            Err(BudgetRefusal::DailyExhausted { .. })
        ));
        b.record("req-5", 0, next_day + 86_400).expect("rec");
        assert!(matches!(
            b.admit(&limits(), Some(10), next_day + 86_400),
            Err(BudgetRefusal::MonthlyExhausted {
                used: 5_000,
                limit: 5_000
            })
        ));
        // December: a new month.
        let dec_1 = NOV_24 + 7 * 86_400;
        assert!(b.admit(&limits(), Some(10), dec_1).is_ok());
        assert_eq!(b.used(dec_1), (0, 0));
    }

    #[test]
    fn a_damaged_ledger_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("budget.json");
        std::fs::write(&path, "{garbage").expect("write");
        assert!(Budget::open(&path).is_err());
    }
}
