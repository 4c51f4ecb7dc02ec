//! Key expiry, judged the way monitoring wants it (shared/domain.md §4): the versions a cluster
//! depends on (the one in its keyId, and during a rotation window the previous one), each
//! enabled, valid already, and not expiring inside the warning or critical window. Pure: key
//! facts in, statuses out; the command gathers and prints.

use crate::azure::keys::KeyVersionInfo;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// Nagios-style status; the exit code is its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The worse of two; UNKNOWN is worse than CRITICAL only when nothing is CRITICAL, as
    /// monitoring does (a known emergency outranks an unknown).
    pub fn worst(self, other: Status) -> Status {
        match (self, other) {
            (Status::Critical, _) | (_, Status::Critical) => Status::Critical,
            (a, b) => a.max(b),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Windows {
    pub warn: Duration,
    pub critical: Duration,
}

/// Parses `30d`, `12h`, `90m`, `45s` (a bare number is seconds: the twin's own flags).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30d, 12h, 90m or 45s"))?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{s}' has an unknown unit: use s, m, h or d")),
    };
    let secs = n
        .checked_mul(per)
        .ok_or_else(|| format!("'{s}' is too long a duration"))?;
    Ok(std::time::Duration::from_secs(secs))
}

/// A check window or an extension (`30d`, `12h`): the unit is required, since `--warn 30` read
/// as 30 seconds silently turns a monthly warning into none.
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "'{t}' has no unit: write {t}d (days), {t}h, {t}m or {t}s"
        ));
    }
    let d = parse_duration(t)?;
    // Past chrono's range (about 292 million years) it is no date anyone means.
    i64::try_from(d.as_secs())
        .ok()
        .and_then(Duration::try_seconds)
        .ok_or_else(|| format!("'{t}' is too long a duration"))
}

/// One key version and what it is to the cluster.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReport {
    pub key_id: String,
    /// `in-use`, `must-stay-alive` (the ledger), `newest`.
    pub roles: Vec<&'static str>,
    /// Whether the cluster depends on it (only those decide the status).
    pub needed: bool,
    pub enabled: Option<bool>,
    pub not_before: Option<DateTime<Utc>>,
    pub expires_on: Option<DateTime<Utc>>,
    pub status: Status,
    pub note: String,
}

/// Judges one version now.
pub fn judge(v: &KeyVersionInfo, now: DateTime<Utc>, w: Windows) -> (Status, String) {
    if !v.enabled {
        return (
            Status::Critical,
            "disabled: the KMS plugin can neither encrypt nor decrypt with it".into(),
        );
    }
    if let Some(nbf) = v.not_before.filter(|n| *n > now) {
        return (
            Status::Critical,
            format!("not valid before {nbf}: the KMS plugin cannot use it yet"),
        );
    }
    let Some(exp) = v.expires_on else {
        return (
            Status::Ok,
            "no expiry date (nothing to watch; an expiry policy may want one)".into(),
        );
    };
    let left = exp - now;
    let days = left.num_hours() as f64 / 24.0;
    if left <= Duration::zero() {
        (
            Status::Critical,
            format!(
                "expired on {exp}: KeyExpired, the KMS plugin can no longer encrypt (extend the expiry or rotate)"
            ),
        )
    } else if left <= w.critical {
        (
            Status::Critical,
            format!("expires on {exp}, in {days:.1} days"),
        )
    } else if left <= w.warn {
        (
            Status::Warning,
            format!("expires on {exp}, in {days:.1} days"),
        )
    } else {
        (Status::Ok, format!("expires on {exp}, in {days:.0} days"))
    }
}

/// What `--fix extend` does with one version the check reported.
#[derive(Clone, Debug, PartialEq)]
pub enum ExtendPlan {
    /// Set its expiry to the new date.
    Extend,
    /// Leave it: why (it is not what makes the check fail, or an expiry would not help).
    Skip(String),
    /// It makes the check fail and an extension cannot fix it: refuse, nothing changed.
    Refuse(String),
}

/// The rule of `--fix extend`: only the versions the cluster needs that make the check WARNING
/// or CRITICAL, enabled and valid already, with an expiry earlier than `new`. A version without
/// an expiry keeps none (an expiry that nobody asked for is one more thing that can expire).
pub fn plan_extension(v: &VersionReport, now: DateTime<Utc>, new: DateTime<Utc>) -> ExtendPlan {
    let skip = |why: &str| ExtendPlan::Skip(why.to_string());
    if !v.needed {
        return skip("not used by the cluster");
    }
    if v.status == Status::Unknown {
        return ExtendPlan::Refuse(format!(
            "{} could not be read ({}): kmsctl extends only what it has read",
            v.key_id, v.note
        ));
    }
    if !matches!(v.status, Status::Warning | Status::Critical) {
        return match v.expires_on {
            None => skip("no expiry date: kmsctl does not add one"),
            Some(_) => skip("not what makes the check fail"),
        };
    }
    if v.enabled == Some(false) {
        return ExtendPlan::Refuse(format!(
            "{} is disabled; kmsctl never extends a disabled version. Enable it first if it must serve (az keyvault key set-attributes --enabled true), or rotate",
            v.key_id
        ));
    }
    if let Some(nbf) = v.not_before.filter(|n| *n > now) {
        return ExtendPlan::Refuse(format!(
            "{} is not valid before {nbf}: a later expiry does not make it usable",
            v.key_id
        ));
    }
    match v.expires_on {
        None => skip("no expiry date: kmsctl does not add one"),
        Some(e) if e >= new => ExtendPlan::Refuse(format!(
            "{} already expires on {e}, not before {new}: the extension would shorten it",
            v.key_id
        )),
        Some(_) => ExtendPlan::Extend,
    }
}

/// An ISO 8601 duration as Key Vault's rotation policies write them (`P90D`, `P1Y`, `P2M`,
/// `PT12H`); months count 30 days and years 365, as Key Vault does.
pub fn iso_duration(s: &str) -> Option<Duration> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut total = Duration::zero();
    let mut add = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let secs = units.iter().find(|(u, _)| *u == c)?.1;
            total += Duration::seconds(num.parse::<i64>().ok()? * secs);
            num.clear();
        }
        num.is_empty().then_some(())
    };
    add(
        date,
        &[
            ('Y', 365 * 86_400),
            ('M', 30 * 86_400),
            ('W', 7 * 86_400),
            ('D', 86_400),
        ],
    )?;
    add(time, &[('H', 3600), ('M', 60), ('S', 1)])?;
    Some(total)
}

/// When a rotation policy next rotates, from its Rotate action's trigger and the newest
/// version's creation and expiry.
pub fn next_rotation(
    time_after_create: Option<&str>,
    time_before_expiry: Option<&str>,
    newest_created: Option<DateTime<Utc>>,
    newest_expires: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    if let (Some(t), Some(c)) = (time_after_create.and_then(iso_duration), newest_created) {
        return Some(c + t);
    }
    match (time_before_expiry.and_then(iso_duration), newest_expires) {
        (Some(t), Some(e)) => Some(e - t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::keys::KeyId;

    fn version(enabled: bool, exp_days: Option<i64>, nbf_days: Option<i64>) -> KeyVersionInfo {
        let now = Utc::now();
        KeyVersionInfo {
            id: KeyId::parse("https://v.vault.azure.net/keys/k/1").unwrap(),
            kty: Some("RSA".into()),
            key_ops: vec![],
            enabled,
            expires_on: exp_days.map(|d| now + Duration::days(d)),
            not_before: nbf_days.map(|d| now + Duration::days(d)),
            created_on: None,
        }
    }

    const W: Windows = Windows {
        warn: Duration::days(30),
        critical: Duration::days(7),
    };

    #[test]
    fn each_boundary() {
        let s = |v: KeyVersionInfo| judge(&v, Utc::now(), W).0;
        assert_eq!(s(version(true, Some(90), None)), Status::Ok);
        assert_eq!(s(version(true, Some(31), None)), Status::Ok);
        assert_eq!(s(version(true, Some(29), None)), Status::Warning);
        assert_eq!(s(version(true, Some(8), None)), Status::Warning);
        assert_eq!(s(version(true, Some(6), None)), Status::Critical);
        assert_eq!(s(version(true, Some(-1), None)), Status::Critical);
        assert_eq!(s(version(false, Some(90), None)), Status::Critical);
        assert_eq!(s(version(true, Some(90), Some(2))), Status::Critical);
        assert_eq!(s(version(true, None, None)), Status::Ok);
        assert!(
            judge(&version(true, None, None), Utc::now(), W)
                .1
                .contains("no expiry")
        );
    }

    #[test]
    fn worst_and_durations() {
        assert_eq!(Status::Ok.worst(Status::Warning), Status::Warning);
        assert_eq!(Status::Unknown.worst(Status::Critical), Status::Critical);
        assert_eq!(Status::Warning.worst(Status::Unknown), Status::Unknown);
        assert_eq!(iso_duration("P90D"), Some(Duration::days(90)));
        assert_eq!(iso_duration("P1Y"), Some(Duration::days(365)));
        assert_eq!(
            iso_duration("P1M2DT3H"),
            Some(Duration::days(32) + Duration::hours(3))
        );
        assert_eq!(iso_duration("90D"), None);
        let created = Utc::now();
        assert_eq!(
            next_rotation(Some("P30D"), None, Some(created), None),
            Some(created + Duration::days(30))
        );
        assert_eq!(parse_duration("30d").unwrap().as_secs(), 30 * 86_400);
        assert!(parse_duration("30x").is_err());
    }

    #[test]
    fn spans_need_a_unit() {
        assert_eq!(parse_span("30d"), Ok(Duration::days(30)));
        assert_eq!(parse_span("12h"), Ok(Duration::hours(12)));
        assert_eq!(parse_span("90m"), Ok(Duration::minutes(90)));
        let e = parse_span("30").unwrap_err();
        assert!(e.contains("no unit") && e.contains("30d"), "{e}");
        assert!(parse_span("30x").is_err());
        assert!(parse_span("").is_err());
        // Overflows are refused, never a panic.
        assert!(
            parse_span("99999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
        assert!(
            parse_span("18446744073709551615s")
                .unwrap_err()
                .contains("too long")
        );
    }

    fn report(status: Status, exp_days: Option<i64>, enabled: bool, needed: bool) -> VersionReport {
        VersionReport {
            key_id: "https://v.vault.azure.net/keys/k/1".into(),
            roles: vec!["must-stay-alive"],
            needed,
            enabled: Some(enabled),
            not_before: None,
            expires_on: exp_days.map(|d| Utc::now() + Duration::days(d)),
            status,
            note: String::new(),
        }
    }

    #[test]
    fn an_extension_acts_only_on_what_makes_the_check_fail() {
        let now = Utc::now();
        let new = now + Duration::days(90);
        let plan = |v: VersionReport| plan_extension(&v, now, new);
        assert_eq!(
            plan(report(Status::Critical, Some(3), true, true)),
            ExtendPlan::Extend
        );
        assert_eq!(
            plan(report(Status::Warning, Some(20), true, true)),
            ExtendPlan::Extend
        );
        // OK ones, the ones without an expiry and the ones the cluster does not use are left.
        assert!(matches!(
            plan(report(Status::Ok, Some(60), true, true)),
            ExtendPlan::Skip(_)
        ));
        assert!(
            matches!(plan(report(Status::Ok, None, true, true)), ExtendPlan::Skip(w) if w.contains("no expiry"))
        );
        assert!(matches!(
            plan(report(Status::Critical, Some(3), true, false)),
            ExtendPlan::Skip(_)
        ));
        // What a later expiry cannot fix, or would shorten, is refused.
        assert!(
            matches!(plan(report(Status::Critical, Some(60), false, true)), ExtendPlan::Refuse(w) if w.contains("disabled"))
        );
        assert!(
            matches!(plan(report(Status::Critical, Some(120), true, true)), ExtendPlan::Refuse(w) if w.contains("shorten"))
        );
        assert!(matches!(
            plan(report(Status::Unknown, None, true, true)),
            ExtendPlan::Refuse(_)
        ));
        let mut nbf = report(Status::Critical, Some(60), true, true);
        nbf.not_before = Some(now + Duration::days(2));
        assert!(matches!(plan(nbf), ExtendPlan::Refuse(_)));
    }
}

/// `check-expiry --fix`: what to do about versions that make the check fail.
#[derive(Clone, Debug, PartialEq)]
pub enum Fix {
    Extend(chrono::Duration),
    Rotate,
}

/// Parses `--fix` (`extend=90d` or `rotate`).
pub fn parse_fix(s: &str) -> Result<Fix, String> {
    match s.split_once('=') {
        Some(("extend", d)) => Ok(Fix::Extend(parse_span(d)?)),
        None if s == "rotate" => Ok(Fix::Rotate),
        _ => Err(format!(
            "'{s}': use extend=<duration> (e.g. extend=90d) or rotate"
        )),
    }
}
