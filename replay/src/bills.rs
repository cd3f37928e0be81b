//! Detail bills of one Beijing calendar month (R5): one row per account, resource and billing
//! mode, with totals, and the month's flow-bill payables beside them (they must agree, to the
//! cent, because each line is truncated before it is summed: R2, R5).

use crate::history::{self, HistoryError};
use poolbill_domain::money::{fmt_cents, fmt_exact};
use poolbill_domain::BillLine;
use poolbill_domain::Event;
use poolbill_projections::{bill_month_tag, month_of, DetailBills, DetailView, Projections};
use poolbill_store::EventStore;
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MonthBills {
    pub month: String,
    pub rows: Vec<DetailView>,
    pub total_payable: String,
    pub total_round_off: String,
    pub total_list: String,
    pub total_discount: String,
    /// The sum of that month's flow-bill payables: must equal `total_payable` (R5).
    pub flow_payable: String,
}

/// The detail bills of `month` ("2023-04"); months group lines by the Beijing date of their
/// start (R1, R5). A malformed month is an error naming it.
pub fn month_bills(projections: &Projections, month: &str) -> Result<MonthBills, MonthError> {
    let mut summing = MonthSums::new(month)?;
    for bill in &projections.bills {
        summing.add(&bill.line);
    }
    Ok(summing.finish())
}

/// One month's detail bills being summed as flow-bill lines go by (a fold of any length keeps
/// only the month's rows: resources × modes).
/// Why a month's bills could not be read from a store.
#[derive(Debug, thiserror::Error)]
pub enum MonthInError {
    #[error(transparent)]
    Month(#[from] MonthError),
    #[error(transparent)]
    Read(#[from] HistoryError),
}

/// A month's bills from a store, through its tag index: only the month's lines are read (each
/// line is tagged with the Beijing month it starts in), not the whole log.
pub fn month_in(store: &dyn EventStore, month: &str) -> Result<MonthBills, MonthInError> {
    let mut sums = MonthSums::new(month)?;
    history::index_up_to_date(store)?;
    for position in store.tagged(&bill_month_tag(month), 0, usize::MAX).map_err(HistoryError::Store)? {
        if let (_, Event::Charged { line }) = history::read(store, position)? {
            sums.add(&line);
        }
    }
    Ok(sums.finish())
}

pub struct MonthSums {
    month: String,
    details: DetailBills,
    /// Summed from the flow bills themselves, not the detail rows, so that the two can be compared.
    flow: Decimal,
}

impl MonthSums {
    pub fn new(month: &str) -> Result<MonthSums, MonthError> {
        check_month(month)?;
        Ok(MonthSums { month: month.to_string(), details: DetailBills::default(), flow: Decimal::ZERO })
    }

    /// Count `line` if it starts in the month.
    pub fn add(&mut self, line: &BillLine) {
        if month_of(line.start) == self.month {
            self.details.add(line);
            self.flow += line.amounts.payable;
        }
    }

    pub fn finish(self) -> MonthBills {
        let details = self.details.into_rows();
        let sums = details.iter().fold([Decimal::ZERO; 4], |mut s, d| {
            s[0] += d.amounts.list_price;
            s[1] += d.amounts.discount;
            s[2] += d.amounts.round_off;
            s[3] += d.amounts.payable;
            s
        });
        MonthBills {
            month: self.month,
            rows: details.into_iter().map(DetailView::of).collect(),
            total_list: fmt_exact(sums[0]),
            total_discount: fmt_exact(sums[1]),
            total_round_off: fmt_exact(sums[2]),
            total_payable: fmt_cents(sums[3]),
            flow_payable: fmt_cents(self.flow),
        }
    }
}

/// A month that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("month {month:?} is not a calendar month written YYYY-MM (e.g. 2023-04)")]
pub struct MonthError {
    pub month: String,
}

/// "YYYY-MM" with a month 01..=12.
fn check_month(month: &str) -> Result<(), MonthError> {
    let bad = || MonthError { month: month.to_string() };
    let (year, mm) = month.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(year, 4) || !digits(mm, 2) {
        return Err(bad());
    }
    match mm.parse::<u32>() {
        Ok(1..=12) => Ok(()),
        _ => Err(bad()),
    }
}

const HEADER: [&str; 10] = ["month", "account", "resource", "mode", "usage_hours", "list_price", "discount", "round_off", "payable", "lines"];

impl MonthBills {
    /// Every row as its fields, then the total row.
    fn records(&self) -> Vec<Vec<String>> {
        let mut records: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.month.clone(),
                    r.account.clone(),
                    r.resource.clone(),
                    r.mode.to_string(),
                    r.usage_hours.clone(),
                    r.list_price.clone(),
                    r.discount.clone(),
                    r.round_off.clone(),
                    r.payable.clone(),
                    r.lines.to_string(),
                ]
            })
            .collect();
        records.push(vec![
            "total".to_string(),
            String::new(),
            String::new(),
            String::new(),
            fmt_exact(self.usage_hours()),
            self.total_list.clone(),
            self.total_discount.clone(),
            self.total_round_off.clone(),
            self.total_payable.clone(),
            self.rows.iter().map(|r| r.lines).sum::<u64>().to_string(),
        ]);
        records
    }

    /// The rows' usage summed (each row's figure is already rounded to 8 places for display).
    fn usage_hours(&self) -> Decimal {
        self.rows.iter().filter_map(|r| r.usage_hours.parse::<Decimal>().ok()).sum()
    }

    /// Aligned columns, a total row, and whether the flow bills agree (R5).
    pub fn to_table(&self) -> String {
        let mut lines = vec![HEADER.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        lines.extend(self.records());
        let widths: Vec<usize> = (0..HEADER.len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
        let mut out = format!("DETAIL BILLS {}\n", self.month);
        for line in &lines {
            let cells: Vec<String> = line.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
        }
        let agree = if self.flow_payable == self.total_payable { "agrees" } else { "DIFFERS from the detail total" };
        out.push_str(&format!("flow bills' payable {}: {agree} (R5)\n", self.flow_payable));
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("month bills serialise")
    }

    /// RFC 4180 CSV (lines end with "\n"): a header, the rows, then a `total` row.
    pub fn to_csv(&self) -> String {
        let mut writer = csv::Writer::from_writer(Vec::new());
        // Writing to memory fails only if the records are ragged, and every record has the
        // header's fields.
        writer.write_record(HEADER).expect("a CSV header");
        for record in self.records() {
            writer.write_record(&record).expect("a CSV record of the header's width");
        }
        let bytes = writer.into_inner().expect("CSV written to memory");
        String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let bills = MonthBills {
            month: "2023-04".into(),
            rows: Vec::new(),
            total_list: "1,5".into(),
            total_discount: "say \"0\"".into(),
            total_round_off: "a\nb".into(),
            total_payable: "1.50".into(),
            flow_payable: "1.50".into(),
        };
        let csv = bills.to_csv();
        let total = csv.split_once('\n').map(|(_, rest)| rest).unwrap();
        assert_eq!(total, "total,,,,0,\"1,5\",\"say \"\"0\"\"\",\"a\nb\",1.50,0\n");
    }
}
