//! The report: one row per figure, with the command that produced it, the baseline measured in
//! the same run, the target and whether it is met; as a Markdown table and as JSON.

use serde::Serialize;
use serde_json::Value;

/// A target, checked against a measured number.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The measured number must be at most `limit`.
    AtMost { limit: f64, unit: String },
    /// The measured number must be at least `limit`.
    AtLeast { limit: f64, unit: String },
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    pub what: String,
    pub target: Target,
    pub measured: f64,
    pub met: bool,
    /// How far off: measured / limit (at most) or limit / measured (at least); ≤ 1 when met.
    pub factor: f64,
}

impl Check {
    pub fn at_most(what: &str, measured: f64, limit: f64, unit: &str) -> Check {
        let factor = if limit > 0.0 { measured / limit } else { f64::INFINITY };
        Check { what: what.into(), target: Target::AtMost { limit, unit: unit.into() }, measured, met: measured <= limit, factor }
    }

    pub fn at_least(what: &str, measured: f64, limit: f64, unit: &str) -> Check {
        let factor = if measured > 0.0 { limit / measured } else { f64::INFINITY };
        Check { what: what.into(), target: Target::AtLeast { limit, unit: unit.into() }, measured, met: measured >= limit, factor }
    }

    fn target_text(&self) -> String {
        match &self.target {
            Target::AtMost { limit, unit } => format!("{} ≤ {}", self.what, number(*limit, unit)),
            Target::AtLeast { limit, unit } => format!("{} ≥ {}", self.what, number(*limit, unit)),
        }
    }

    fn verdict(&self) -> String {
        if self.met {
            format!("yes ({})", self.what)
        } else {
            format!("**no** ({}: {:.1}× off)", self.what, self.factor)
        }
    }
}

fn number(value: f64, unit: &str) -> String {
    match unit {
        "s" => seconds(value),
        "B" => bytes(value as u64),
        "events/s" | "commands/s" | "syncs/s" => format!("{} {unit}", grouped(value)),
        "B/event" => format!("{value:.0} {unit}"),
        _ => format!("{value} {unit}"),
    }
}

pub fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// 1234567.8 → "1,234,568".
pub fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Figure {
    /// The name `--only` selects it by.
    pub key: String,
    pub what: String,
    pub command: String,
    /// The measurement, for people.
    pub value: String,
    pub peak_rss: Option<u64>,
    pub baseline: String,
    pub checks: Vec<Check>,
    /// The raw numbers, for comparing runs.
    pub numbers: Value,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub preset: String,
    pub seed: u64,
    pub workload: Value,
    pub machine: Value,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| figure | command | measured | peak memory | baseline (same run) | target | met? |\n");
        out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
        for f in &self.figures {
            let targets: Vec<String> = f.checks.iter().map(Check::target_text).collect();
            let verdicts: Vec<String> = f.checks.iter().map(Check::verdict).collect();
            out.push_str(&format!(
                "| {} | `{}` | {} | {} | {} | {} | {} |\n",
                f.what,
                f.command.replace('|', "\\|"),
                f.value,
                f.peak_rss.map(bytes).unwrap_or_else(|| "–".into()),
                if f.baseline.is_empty() { "–" } else { &f.baseline },
                if targets.is_empty() { "–".into() } else { targets.join("; ") },
                if verdicts.is_empty() { "–".into() } else { verdicts.join("; ") },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_say_by_how_much_a_target_is_missed() {
        let slow = Check::at_most("time", 13.0, 0.05, "s");
        assert!(!slow.met);
        assert_eq!(slow.verdict(), "**no** (time: 260.0× off)");
        let fast = Check::at_least("rate", 2_000_000.0, 1_000_000.0, "events/s");
        assert!(fast.met);
        assert_eq!(fast.target_text(), "rate ≥ 1,000,000 events/s");
        assert_eq!(grouped(1234.4), "1,234");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(bytes(455_000_000), "455 MB");
        assert_eq!(seconds(0.0123), "12 ms");
    }
}
