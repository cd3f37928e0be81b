//! Audit: recompute the bills of a log and compare them with what was charged.
//!
//! The recomputation re-runs the log's own commands from scratch (so it does not trust the
//! amounts the log recorded), checks that it gives the very lines the log holds, then matches
//! each charged line to the recomputed ones by the fields it gives: the resource, and the item,
//! start and end where given (the lines of that resource and item lying within [start, end]).

use crate::rerun::{commands, rerun, WhatIf};
use chrono::DateTime;
use poolbill_domain::money::{fmt_cents, trunc2};
use poolbill_domain::time::to_beijing;
use poolbill_domain::{BillLine, Event, Instant, Item};
use poolbill_store::Envelope;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use std::str::FromStr;

/// CHARGED.json: `{"bills": [{"resource", "item"?, "start"?, "end"?, "payable"}], "total"?}`.
/// A line may carry `"erratum"`: why a known source (a seed example) differs; it is echoed.
#[derive(Clone, Debug, PartialEq)]
pub struct Charged {
    pub bills: Vec<ChargedLine>,
    pub total: Option<Decimal>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChargedLine {
    pub resource: String,
    pub item: Option<String>,
    pub start: Option<Instant>,
    pub end: Option<Instant>,
    pub payable: Decimal,
    pub erratum: Option<String>,
}

/// What is wrong with a CHARGED.json, and where (`bills[2].payable`; empty for the whole file).
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct ChargedError {
    pub path: String,
    pub message: String,
    /// The error underneath (JSON syntax, a decimal), when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn refuse<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, ChargedError> {
    Err(ChargedError { path: path.into(), message: message.into(), source: None })
}

/// Read CHARGED.json strictly; errors name the field (`bills[2].payable`).
pub fn parse_charged(text: &str) -> Result<Charged, ChargedError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ChargedError {
        path: String::new(),
        message: format!("not valid JSON at line {} column {}", e.line(), e.column()),
        source: Some(Box::new(e)),
    })?;
    let Some(obj) = value.as_object() else { return refuse("", "expected an object with bills (and total)") };
    for key in obj.keys() {
        if !["bills", "total", "note", "source"].contains(&key.as_str()) {
            return refuse(field(key), "unknown field (expected bills, total)");
        }
    }
    let Some(items) = obj.get("bills").and_then(Value::as_array) else { return refuse("bills", "missing, or not an array") };
    let mut bills = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("bills[{i}]");
        let Some(line) = item.as_object() else { return refuse(path, "expected an object") };
        for key in line.keys() {
            if !["resource", "item", "start", "end", "payable", "erratum", "note"].contains(&key.as_str()) {
                return refuse(format!("{path}.{}", field(key)), "unknown field (expected resource, item, start, end, payable)");
            }
        }
        let text = |key: &str| -> Result<Option<String>, ChargedError> {
            match line.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => refuse(format!("{path}.{key}"), "expected a string"),
            }
        };
        let instant = |key: &str| -> Result<Option<Instant>, ChargedError> {
            text(key)?
                .map(|s| {
                    DateTime::parse_from_rfc3339(&s).map(to_beijing).map_err(|e| ChargedError {
                        path: format!("{path}.{key}"),
                        message: format!("{s:?} is not an RFC 3339 instant"),
                        source: Some(Box::new(e)),
                    })
                })
                .transpose()
        };
        let Some(resource) = text("resource")? else { return refuse(format!("{path}.resource"), "missing field") };
        let Some(payable) = text("payable")? else { return refuse(format!("{path}.payable"), "missing field") };
        let payable = money(&payable, &format!("{path}.payable"))?;
        bills.push(ChargedLine { resource, item: text("item")?, start: instant("start")?, end: instant("end")?, payable, erratum: text("erratum")? });
    }
    let total = match obj.get("total") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(money(s, "total")?),
        Some(_) => return refuse("total", "money is a decimal string"),
    };
    Ok(Charged { bills, total })
}

/// A field name as a path names it: quoted when it is not a plain name (`[""]`).
fn field(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || c == '_') {
        key.to_string()
    } else {
        format!("[{key:?}]")
    }
}

fn money(text: &str, path: &str) -> Result<Decimal, ChargedError> {
    let plain = text.strip_prefix('-').unwrap_or(text);
    if plain.is_empty() || !plain.chars().all(|c| c.is_ascii_digit() || c == '.') || plain.matches('.').count() > 1 {
        return refuse(path, format!("{text:?} is not a decimal amount"));
    }
    Decimal::from_str(text).map_err(|e| ChargedError {
        path: path.into(),
        message: format!("{text:?} is not a decimal amount"),
        source: Some(Box::new(e)),
    })
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub matched: usize,
    pub discrepancies: Vec<Discrepancy>,
    pub matches: Vec<Match>,
    /// Lines the log recorded that its own commands do not give again (or the other way).
    pub integrity: Vec<String>,
}

impl Report {
    pub fn all_match(&self) -> bool {
        self.discrepancies.is_empty() && self.integrity.is_empty()
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Match {
    pub resource: String,
    pub item: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub payable: String,
    pub lines: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Discrepancy {
    pub resource: String,
    pub item: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub charged: String,
    pub computed: String,
    /// charged − computed.
    pub difference: String,
    /// The rule that decides the computed figure.
    pub rule: String,
    pub reason: String,
    pub lines: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erratum: Option<String>,
}

/// Recompute the log's bills and compare them with `charged`.
pub fn audit(envelopes: &[Envelope], charged: &Charged) -> Report {
    let mut recorded = recorded_lines(envelopes);
    let until = envelopes.last().map(|e| e.at);
    let mut computed: Vec<BillLine> = match until {
        Some(until) => rerun(&commands(envelopes), until, &WhatIf::default()).projections.bills.into_iter().map(|b| b.line).collect(),
        None => Vec::new(),
    };
    // Compared by start and resource (a stable sort keeps each resource's own order): a merged
    // log of shards records one instant's lines shard by shard, one re-run in its own order.
    for lines in [&mut recorded, &mut computed] {
        lines.sort_by(|a, b| (a.start, &a.resource).cmp(&(b.start, &b.resource)));
    }
    let mut integrity = Vec::new();
    if recorded != computed {
        let differing = recorded.iter().zip(&computed).position(|(a, b)| a != b).unwrap_or(recorded.len().min(computed.len()));
        integrity.push(format!(
            "the log records {} bill lines and its commands give {}; they first differ at line {} ({})",
            recorded.len(),
            computed.len(),
            differing + 1,
            recorded.get(differing).or(computed.get(differing)).map_or("-".to_string(), |l| format!(
                "{} {}",
                l.resource,
                to_beijing(l.start).to_rfc3339()
            ))
        ));
    }
    let mut report = Report { matched: 0, discrepancies: Vec::new(), matches: Vec::new(), integrity };
    for line in &charged.bills {
        let selected: Vec<&BillLine> = computed.iter().filter(|l| selects(line, l)).collect();
        let sum: Decimal = selected.iter().map(|l| l.amounts.payable).sum();
        let show = |t: Option<Instant>| t.map(|t| to_beijing(t).to_rfc3339());
        if sum == line.payable && !selected.is_empty() {
            report.matched += 1;
            report.matches.push(Match {
                resource: line.resource.clone(),
                item: line.item.clone(),
                start: show(line.start),
                end: show(line.end),
                payable: fmt_cents(sum),
                lines: selected.len(),
            });
        } else {
            let (rule, reason) = why(&selected, line.payable);
            report.discrepancies.push(Discrepancy {
                resource: line.resource.clone(),
                item: line.item.clone(),
                start: show(line.start),
                end: show(line.end),
                charged: fmt_cents(line.payable),
                computed: fmt_cents(sum),
                difference: fmt_cents(line.payable - sum),
                rule,
                reason,
                lines: selected.len(),
                erratum: line.erratum.clone(),
            });
        }
    }
    if let Some(total) = charged.total {
        let sum: Decimal = computed.iter().map(|l| l.amounts.payable).sum();
        if sum == total {
            report.matched += 1;
        } else {
            report.discrepancies.push(Discrepancy {
                resource: "(total)".into(),
                item: None,
                start: None,
                end: None,
                charged: fmt_cents(total),
                computed: fmt_cents(sum),
                difference: fmt_cents(total - sum),
                rule: "R5".into(),
                reason: "the total is the sum of every flow-bill line's payable".into(),
                lines: computed.len(),
                erratum: None,
            });
        }
    }
    report
}

/// The lines a charged line stands for: its resource, its item if given, within [start, end].
fn selects(charged: &ChargedLine, line: &BillLine) -> bool {
    line.resource == charged.resource
        && charged.item.as_deref().is_none_or(|item| item == line.item.as_str())
        && charged.start.is_none_or(|s| line.start >= s)
        && charged.end.is_none_or(|e| line.end <= e)
}

/// The rule that decides the computed figure, and what most likely explains the difference.
fn why(lines: &[&BillLine], charged: Decimal) -> (String, String) {
    if lines.is_empty() {
        return ("R5".into(), "no line of the log matches: nothing of this was charged under the rules".into());
    }
    // Each kind of line is decided by its own rule; a selection of several kinds cites each.
    let mut rules: Vec<&str> = lines
        .iter()
        .map(|l| match l.item {
            Item::Compute => "R4",
            Item::Storage => "R14",
            Item::Purchase | Item::Renewal => "R3",
            Item::Upgrade | Item::Downgrade => "R9",
            Item::Conversion => "R11",
            Item::Refund => "R15",
            Item::Package => "R13",
        })
        .collect();
    rules.sort_by_key(|r| r[1..].parse::<u32>().unwrap_or(0));
    rules.dedup();
    let rule = rules.join(", ");
    let net: Decimal = lines.iter().map(|l| l.amounts.list_price - l.amounts.discount).sum();
    let computed: Decimal = lines.iter().map(|l| l.amounts.payable).sum();
    let rounded = net.round_dp(2);
    if lines.len() > 1 && (charged == trunc2(net) || charged == rounded) {
        return (
            "R2".into(),
            format!("the charged figure prices the {} lines' sum ({}) at once; R2 truncates each line to 2 places", lines.len(), net.normalize()),
        );
    }
    let diff = (charged - computed).abs();
    if diff < Decimal::new(1, 2) * Decimal::from(lines.len() as u64) && lines.len() > 1 {
        return ("R2".into(), "within the round-off of the lines: R2 truncates each line to 2 places".into());
    }
    (rule, format!("the rules give {} over {} line(s)", fmt_cents(computed), lines.len()))
}

/// The bill lines a log recorded, in log order.
pub fn recorded_lines(envelopes: &[Envelope]) -> Vec<BillLine> {
    envelopes
        .iter()
        .filter(|e| e.event_type == "charged")
        .filter_map(|e| match poolbill_projections::event_of(e) {
            Ok(Event::Charged { line }) => Some(line),
            _ => None,
        })
        .collect()
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for m in &self.matches {
            out.push_str(&format!(
                "match        {} {}{} payable {} ({} line(s))\n",
                m.resource,
                m.item.as_deref().map(|i| format!("{i} ")).unwrap_or_default(),
                span(&m.start, &m.end),
                m.payable,
                m.lines
            ));
        }
        for d in &self.discrepancies {
            out.push_str(&format!(
                "DISCREPANCY  {} {}{} charged {} computed {} difference {} [{}] {}\n",
                d.resource,
                d.item.as_deref().map(|i| format!("{i} ")).unwrap_or_default(),
                span(&d.start, &d.end),
                d.charged,
                d.computed,
                d.difference,
                d.rule,
                d.reason
            ));
            if let Some(e) = &d.erratum {
                out.push_str(&format!("             known erratum: {e}\n"));
            }
        }
        for i in &self.integrity {
            out.push_str(&format!("INTEGRITY    {i}\n"));
        }
        out.push_str(&format!("{} matched, {} discrepancies\n", self.matched, self.discrepancies.len() + self.integrity.len()));
        out
    }
}

fn span(start: &Option<String>, end: &Option<String>) -> String {
    match (start, end) {
        (None, None) => String::new(),
        (s, e) => format!("[{} .. {}] ", s.as_deref().unwrap_or("…"), e.as_deref().unwrap_or("…")),
    }
}
