// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Fault plans: deliberate misbehaviour, chosen on the command line
//! (`--fault-plan SPEC`) or through the control socket (`fault_plan`).
//!
//! A plan is a list of rules. Each rule names a fault kind, an optional
//! argument (milliseconds for `delay_inv_ack`), an optional count (how many
//! times it fires; unlimited without one) and a probability (each chance to
//! fire fires with it; 1 without one). Spec syntax:
//! `KIND[=ARG][,count=N][,prob=P][,seed=S]`, e.g. `delay_inv_ack=200,count=3`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors parsing a fault plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultPlanError {
    /// The fault kind is not one the device knows.
    #[error("unknown fault kind `{0}` (known: {KINDS})")]
    UnknownKind(String),
    /// A `key=value` field could not be parsed.
    #[error("bad fault plan field `{0}`")]
    BadField(String),
    /// The probability is not within 0..=1.
    #[error("probability must be within 0..=1")]
    BadProbability,
    /// A `delay_*` kind needs a delay in milliseconds.
    #[error("`{0}` needs a delay: {0}=MS")]
    MissingDelay(FaultKind),
}

const KINDS: &str = "delay_inv_ack, delay_map_pages, delay_destroy_mr, never_ack, drop_fault, dup_fault, fail_resume, fail_dma, \
                     device_error, reset, kill, rogue_record, rogue_write";

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Acknowledge an invalidation `ms` milliseconds late.
    DelayInvAck,
    /// Execute a `MAP_PAGES` at once but complete it `ms` milliseconds
    /// late (a device slower than the driver's command timeout).
    DelayMapPages,
    /// Begin a `DESTROY_MR` but finish it (drop the key, complete the
    /// command) `ms` milliseconds later; the key keeps working meanwhile and
    /// every access through it is logged and counted.
    DelayDestroyMr,
    /// Never acknowledge an invalidation.
    NeverAck,
    /// Do not post a page-fault event (the access stays parked).
    DropFault,
    /// Post a page-fault event twice (same token).
    DupFault,
    /// Answer a RESUME with `STATUS_INJECTED` and fail the parked access.
    FailResume,
    /// Fail a DMA access of the data engine or a command's data buffer.
    FailDma,
    /// Raise a device error (`STATUS_FATAL`, `FATAL_INJECTED`) at a command.
    DeviceError,
    /// Reset the device spontaneously at a command.
    Reset,
    /// Kill the device process at a command or an invalidation (exit
    /// status 137, no clean-up: the client sees the socket close).
    Kill,
    /// Ignore an invalidation (keep the translations) but suppress and
    /// record every stale access made through them.
    RogueRecord,
    /// Ignore an invalidation and really perform the stale accesses.
    RogueWrite,
}

impl FromStr for FaultKind {
    type Err = FaultPlanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.replace('-', "_").as_str() {
            "delay_inv_ack" => FaultKind::DelayInvAck,
            "delay_map_pages" => FaultKind::DelayMapPages,
            "delay_destroy_mr" => FaultKind::DelayDestroyMr,
            "never_ack" => FaultKind::NeverAck,
            "drop_fault" => FaultKind::DropFault,
            "dup_fault" => FaultKind::DupFault,
            "fail_resume" => FaultKind::FailResume,
            "fail_dma" => FaultKind::FailDma,
            "device_error" => FaultKind::DeviceError,
            "reset" => FaultKind::Reset,
            "kill" => FaultKind::Kill,
            "rogue_record" => FaultKind::RogueRecord,
            "rogue_write" => FaultKind::RogueWrite,
            _ => return Err(FaultPlanError::UnknownKind(s.to_string())),
        })
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

fn default_probability() -> f64 {
    1.0
}

/// One rule of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// What it does.
    pub kind: FaultKind,
    /// Argument: the delay in milliseconds for the `delay_*` kinds, else 0.
    #[serde(default)]
    pub ms: u64,
    /// How many more times it may fire; `None` is unlimited.
    #[serde(default)]
    pub count: Option<u64>,
    /// Probability that a chance to fire fires.
    #[serde(default = "default_probability")]
    pub probability: f64,
    /// How many times it fired.
    #[serde(default)]
    pub fired: u64,
}

impl FaultRule {
    /// Checks the fields are consistent.
    pub fn validate(&self) -> Result<(), FaultPlanError> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(FaultPlanError::BadProbability);
        }
        let delay = matches!(
            self.kind,
            FaultKind::DelayInvAck | FaultKind::DelayMapPages | FaultKind::DelayDestroyMr
        );
        if delay && self.ms == 0 {
            return Err(FaultPlanError::MissingDelay(self.kind));
        }
        Ok(())
    }
}

/// A parsed `--fault-plan` spec: the rule and an optional RNG seed.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultSpec {
    /// The rule.
    pub rule: FaultRule,
    /// RNG seed for probabilistic rules, if given.
    pub seed: Option<u64>,
}

impl FromStr for FaultSpec {
    type Err = FaultPlanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut fields = s.split(',');
        let head = fields.next().unwrap_or_default().trim();
        let (kind, arg) = match head.split_once('=') {
            Some((k, a)) => (k, Some(a)),
            None => (head, None),
        };
        let kind: FaultKind = kind.parse()?;
        let ms = match arg {
            Some(a) => a
                .parse()
                .map_err(|_| FaultPlanError::BadField(head.to_string()))?,
            None => 0,
        };
        let mut rule = FaultRule {
            kind,
            ms,
            count: None,
            probability: 1.0,
            fired: 0,
        };
        let mut seed = None;
        for field in fields {
            let field = field.trim();
            let bad = || FaultPlanError::BadField(field.to_string());
            let (k, v) = field.split_once('=').ok_or_else(bad)?;
            match k {
                "count" => rule.count = Some(v.parse().map_err(|_| bad())?),
                "prob" | "probability" => rule.probability = v.parse().map_err(|_| bad())?,
                "seed" => seed = Some(v.parse().map_err(|_| bad())?),
                "ms" => rule.ms = v.parse().map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        rule.validate()?;
        Ok(FaultSpec { rule, seed })
    }
}

/// The active plan.
#[derive(Clone, Debug, Serialize)]
pub struct FaultPlan {
    /// Rules, first match wins.
    pub rules: Vec<FaultRule>,
    #[serde(skip)]
    rng: u64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            rules: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl FaultPlan {
    /// Adds a rule.
    pub fn add(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    /// Seeds the random generator used by probabilistic rules.
    pub fn seed(&mut self, seed: u64) {
        // xorshift must not start at zero
        self.rng = seed | 1;
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Whether a rule of this kind could still fire (without using it up).
    pub fn armed(&self, kind: FaultKind) -> bool {
        self.rules
            .iter()
            .any(|r| r.kind == kind && r.count != Some(0))
    }

    fn next_f64(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A chance for `kind` to fire: returns the rule's argument if it does.
    pub fn fire(&mut self, kind: FaultKind) -> Option<u64> {
        let idx = self
            .rules
            .iter()
            .position(|r| r.kind == kind && r.count != Some(0))?;
        let p = self.rules[idx].probability;
        if p < 1.0 && self.next_f64() >= p {
            return None;
        }
        let rule = &mut self.rules[idx];
        if let Some(c) = rule.count.as_mut() {
            *c -= 1;
        }
        rule.fired = rule.fired.saturating_add(1);
        Some(rule.ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_spec() {
        let s: FaultSpec = "delay_inv_ack=200,count=3".parse().unwrap();
        assert_eq!(s.rule.kind, FaultKind::DelayInvAck);
        assert_eq!(s.rule.ms, 200);
        assert_eq!(s.rule.count, Some(3));
        let s: FaultSpec = "drop-fault,prob=0.5,seed=7".parse().unwrap();
        assert_eq!(s.rule.kind, FaultKind::DropFault);
        assert_eq!(s.seed, Some(7));
        assert!("bogus".parse::<FaultSpec>().is_err());
        assert!("delay_inv_ack".parse::<FaultSpec>().is_err());
        let s: FaultSpec = "delay_destroy_mr=500".parse().unwrap();
        assert_eq!(s.rule.kind, FaultKind::DelayDestroyMr);
        assert_eq!(s.rule.ms, 500);
        let s: FaultSpec = "delay-map-pages=9,count=1".parse().unwrap();
        assert_eq!(s.rule.kind, FaultKind::DelayMapPages);
        assert_eq!(
            "delay_map_pages".parse::<FaultSpec>(),
            Err(FaultPlanError::MissingDelay(FaultKind::DelayMapPages))
        );
        assert!("never_ack,prob=2".parse::<FaultSpec>().is_err());
        assert!("never_ack,count=x".parse::<FaultSpec>().is_err());
    }

    #[test]
    fn count_limits_firing() {
        let mut p = FaultPlan::default();
        p.add("never_ack,count=2".parse::<FaultSpec>().unwrap().rule);
        assert!(p.fire(FaultKind::NeverAck).is_some());
        assert!(p.fire(FaultKind::NeverAck).is_some());
        assert!(p.fire(FaultKind::NeverAck).is_none());
        assert!(p.fire(FaultKind::DropFault).is_none());
    }

    #[test]
    fn probability_is_roughly_honoured() {
        let mut p = FaultPlan::default();
        p.seed(42);
        p.add("drop_fault,prob=0.25".parse::<FaultSpec>().unwrap().rule);
        let n = (0..10000)
            .filter(|_| p.fire(FaultKind::DropFault).is_some())
            .count();
        assert!((2000..3000).contains(&n), "{n}");
    }

    #[test]
    fn json_round_trip() {
        let r: FaultRule = serde_json::from_str(r#"{"kind":"rogue_record","count":1}"#).unwrap();
        assert_eq!(r.kind, FaultKind::RogueRecord);
        assert_eq!(r.probability, 1.0);
        assert_eq!(FaultKind::RogueRecord.to_string(), "rogue_record");
    }
}
