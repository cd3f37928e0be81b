//! `--format table`: the document for people. Its layout may change; scripts use JSON.
//!
//! Made from the JSON document as `write_document` streams it (to a temporary file), in two
//! passes, because a column is as wide as its widest cell: the first finds the widths of the
//! flow bills and the rejections and keeps the small sections, the second writes the rows.
//! Neither pass holds the flow bills or the rejections: memory follows what is live, not the
//! length of the history.

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

// `#` is the number `poolbill explain --bill N` takes.
const BILL_HEADER: [&str; 11] = ["#", "start", "end", "resource", "account", "mode", "item", "list", "discount", "round-off", "payable"];
const DETAIL_HEADER: [&str; 9] = ["month", "resource", "account", "mode", "node-hours", "list", "discount", "round-off", "payable"];
const RESOURCE_HEADER: [&str; 5] = ["id", "state", "mode", "nodes", "expires at"];
const ACCOUNT_HEADER: [&str; 3] = ["id", "balance", "in arrears"];
const REJECTION_HEADER: [&str; 4] = ["index", "type", "rule", "reason"];

/// Write the table of the JSON document `json` (as `write_document` or `to_json` writes it;
/// read from its start) to `out`.
pub fn write(mut json: impl Read + Seek, out: impl Write) -> io::Result<()> {
    // Pass 1: the widths of the long sections; the small ones are kept for pass 2.
    let mut kept = Kept::default();
    let mut bills = Grid::new(BILL_HEADER);
    let mut rejections = Grid::new(REJECTION_HEADER);
    json.seek(SeekFrom::Start(0))?;
    read_document(&mut json, &mut |item| {
        match item {
            Item::Bill(b) => bills.fit(b.cells(&(bills.rows + 1).to_string())),
            Item::Rejection(r) => rejections.fit(r.cells(&r.index())),
            // Bounded by what is live: the final state's resources and accounts, and a detail
            // row per account, resource, mode and month (`write_document` holds these too).
            Item::Detail(d) => kept.details.push(d),
            Item::Resource(r) => kept.resources.push(r),
            Item::Account(a) => kept.accounts.push(a),
            Item::Events(n) => kept.events = n,
        }
        Ok(())
    })?;

    // Pass 2: the rows. The kept sections go between the flow bills and the rejections, which
    // the document has in that order too.
    let mut out = BufWriter::with_capacity(1 << 16, out);
    out.write_all(b"BILLS (flow)\n")?;
    bills.start(&mut out)?;
    let mut number = 0u64;
    let mut middle_written = false;
    json.seek(SeekFrom::Start(0))?;
    read_document(&mut json, &mut |item| match item {
        Item::Bill(_) if middle_written => Err(io::Error::other("the document has flow bills after its rejections")),
        Item::Bill(b) => {
            number += 1;
            bills.row(&mut out, b.cells(&number.to_string()))
        }
        Item::Rejection(r) => {
            if !middle_written {
                middle_written = true;
                kept.write(&mut out, &mut rejections)?;
            }
            rejections.row(&mut out, r.cells(&r.index()))
        }
        _ => Ok(()),
    })?;
    if !middle_written {
        kept.write(&mut out, &mut rejections)?;
    }
    write!(out, "\n{} events\n", kept.events)?;
    out.flush()
}

/// The sections between the flow bills and the rejections, and the count of events.
#[derive(Default)]
struct Kept {
    details: Vec<Detail>,
    resources: Vec<Resource>,
    accounts: Vec<Account>,
    events: u64,
}

impl Kept {
    /// The detail bills, resources and accounts, then the rejections' title and header if any.
    fn write(&self, out: &mut impl Write, rejections: &mut Grid<4>) -> io::Result<()> {
        out.write_all(b"\nBILLS (detail, by month)\n")?;
        let rows: Vec<[&str; 9]> = self.details.iter().map(Detail::cells).collect();
        Grid::new(DETAIL_HEADER).whole(out, &rows)?;

        out.write_all(b"\nRESOURCES\n")?;
        let nodes: Vec<String> = self.resources.iter().map(|r| r.nodes.to_string()).collect();
        let rows: Vec<[&str; 5]> = self
            .resources
            .iter()
            .zip(&nodes)
            .map(|(r, nodes)| [r.id.as_str(), &r.state, &r.mode, nodes, r.expires_at.as_deref().unwrap_or("-")])
            .collect();
        Grid::new(RESOURCE_HEADER).whole(out, &rows)?;

        out.write_all(b"\nACCOUNTS\n")?;
        let rows: Vec<[&str; 3]> = self.accounts.iter().map(|a| [a.id.as_str(), &a.balance, if a.in_arrears { "yes" } else { "no" }]).collect();
        Grid::new(ACCOUNT_HEADER).whole(out, &rows)?;

        // No rejections, no section.
        if rejections.rows > 0 {
            out.write_all(b"\nREJECTIONS\n")?;
            rejections.start(out)?;
        }
        Ok(())
    }
}

/// Columns as wide as their widest cell (in characters), two spaces apart, each row indented by
/// two and without trailing blanks; `(none)` for a section without rows.
struct Grid<const N: usize> {
    header: [&'static str; N],
    widths: [usize; N],
    /// Rows fitted so far.
    rows: u64,
    line: String,
}

impl<const N: usize> Grid<N> {
    fn new(header: [&'static str; N]) -> Self {
        Grid { header, widths: header.map(|h| h.chars().count()), rows: 0, line: String::new() }
    }

    /// Widen the columns to fit a row.
    fn fit(&mut self, cells: [&str; N]) {
        for (w, cell) in self.widths.iter_mut().zip(cells) {
            *w = (*w).max(cell.chars().count());
        }
        self.rows += 1;
    }

    /// The header, or `(none)`: what comes before the rows.
    fn start(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.rows == 0 {
            return out.write_all(b"  (none)\n");
        }
        self.row(out, self.header)
    }

    fn row(&mut self, out: &mut impl Write, cells: [&str; N]) -> io::Result<()> {
        self.line.clear();
        for (i, (cell, width)) in cells.iter().zip(self.widths).enumerate() {
            if i > 0 {
                self.line.push_str("  ");
            }
            self.line.push_str(cell);
            self.line.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
        }
        out.write_all(b"  ")?;
        out.write_all(self.line.trim_end().as_bytes())?;
        out.write_all(b"\n")
    }

    /// A section held whole: fitted, then written.
    fn whole(mut self, out: &mut impl Write, rows: &[[&str; N]]) -> io::Result<()> {
        rows.iter().for_each(|row| self.fit(*row));
        self.start(out)?;
        rows.iter().try_for_each(|row| self.row(out, *row))
    }
}

/// A flow-bill line as the table shows it (the document's other fields are skipped).
#[derive(Deserialize)]
struct Bill {
    start: String,
    end: String,
    resource: String,
    account: String,
    mode: String,
    item: String,
    list_price: String,
    discount: String,
    round_off: String,
    payable: String,
}

impl Bill {
    fn cells<'a>(&'a self, number: &'a str) -> [&'a str; 11] {
        let b = self;
        [number, &b.start, &b.end, &b.resource, &b.account, &b.mode, &b.item, &b.list_price, &b.discount, &b.round_off, &b.payable]
    }
}

#[derive(Deserialize)]
struct Detail {
    month: String,
    resource: String,
    account: String,
    mode: String,
    usage_hours: String,
    list_price: String,
    discount: String,
    round_off: String,
    payable: String,
}

impl Detail {
    fn cells(&self) -> [&str; 9] {
        let d = self;
        [&d.month, &d.resource, &d.account, &d.mode, &d.usage_hours, &d.list_price, &d.discount, &d.round_off, &d.payable]
    }
}

#[derive(Deserialize)]
struct Resource {
    id: String,
    state: String,
    mode: String,
    nodes: u64,
    expires_at: Option<String>,
}

#[derive(Deserialize)]
struct Account {
    id: String,
    balance: String,
    in_arrears: bool,
}

#[derive(Deserialize)]
struct Rejection {
    index: Option<u64>,
    r#type: String,
    rule: String,
    reason: String,
}

impl Rejection {
    fn index(&self) -> String {
        self.index.map_or("-".into(), |i| i.to_string())
    }

    fn cells<'a>(&'a self, index: &'a str) -> [&'a str; 4] {
        [index, &self.r#type, &self.rule, &self.reason]
    }
}

/// One element of the document, in the document's order.
enum Item {
    Bill(Bill),
    Resource(Resource),
    Account(Account),
    Rejection(Rejection),
    Events(u64),
    Detail(Detail),
}

/// Read the JSON document from `json`'s current place, handing each element of its arrays to
/// `each` as it is parsed (an array is never held), and stopping at the first error of `each`.
fn read_document(json: &mut impl Read, each: &mut dyn FnMut(Item) -> io::Result<()>) -> io::Result<()> {
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 16, json));
    let read = de.deserialize_map(Document { each, failed: &mut failed }).and_then(|()| de.end());
    match (failed, read) {
        (Some(e), _) => Err(e),
        (None, read) => read.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("reading the JSON document back: {e}"))),
    }
}

/// The sections the table shows; a document without one of them is refused.
const SECTIONS: [&str; 6] = ["bills", "resources", "accounts", "rejections", "events", "detail_bills"];

struct Document<'a> {
    each: &'a mut dyn FnMut(Item) -> io::Result<()>,
    /// Why `each` stopped the reading, if it did.
    failed: &'a mut Option<io::Error>,
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the JSON document of `poolbill run`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = [false; SECTIONS.len()];
        while let Some(key) = map.next_key::<String>()? {
            let Some(i) = SECTIONS.iter().position(|s| *s == key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            seen[i] = true;
            let (each, failed) = (&mut *self.each, &mut *self.failed);
            match SECTIONS[i] {
                "bills" => map.next_value_seed(Elements { each, failed, wrap: Item::Bill })?,
                "resources" => map.next_value_seed(Elements { each, failed, wrap: Item::Resource })?,
                "accounts" => map.next_value_seed(Elements { each, failed, wrap: Item::Account })?,
                "rejections" => map.next_value_seed(Elements { each, failed, wrap: Item::Rejection })?,
                "detail_bills" => map.next_value_seed(Elements { each, failed, wrap: Item::Detail })?,
                _ => {
                    let events = map.next_value::<u64>()?;
                    if let Err(e) = each(Item::Events(events)) {
                        *failed = Some(e);
                        return Err(A::Error::custom("stopped"));
                    }
                }
            }
        }
        match SECTIONS.iter().zip(seen).find(|(_, seen)| !seen) {
            Some((missing, _)) => Err(A::Error::missing_field(missing)),
            None => Ok(()),
        }
    }
}

/// An array of the document, each element handed on as `wrap` makes it an [`Item`].
struct Elements<'a, T> {
    each: &'a mut dyn FnMut(Item) -> io::Result<()>,
    failed: &'a mut Option<io::Error>,
    wrap: fn(T) -> Item,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Elements<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Elements<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        while let Some(element) = seq.next_element::<T>()? {
            if let Err(e) = (self.each)((self.wrap)(element)) {
                *self.failed = Some(e);
                return Err(S::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolbill_projections::{AccountView, BillView, DetailView, Document, RejectionView, ResourceView};
    use poolbill_replay::document::write_log_document;
    use poolbill_replay::{jsonl, Upto};

    /// The table as it was made from the whole document in memory before it was streamed: the
    /// reference the streamed table must equal, byte for byte.
    fn render(doc: &Document) -> String {
        let mut out = String::new();
        out.push_str("BILLS (flow)\n");
        let rows: Vec<Vec<String>> = doc
            .bills
            .iter()
            .enumerate()
            .map(|(i, b)| {
                vec![
                    (i + 1).to_string(),
                    b.start.clone(),
                    b.end.clone(),
                    b.resource.clone(),
                    b.account.clone(),
                    b.mode.to_string(),
                    b.item.to_string(),
                    b.list_price.clone(),
                    b.discount.clone(),
                    b.round_off.clone(),
                    b.payable.clone(),
                ]
            })
            .collect();
        grid(&mut out, &BILL_HEADER, &rows);

        out.push_str("\nBILLS (detail, by month)\n");
        let rows: Vec<Vec<String>> = doc
            .detail_bills
            .iter()
            .map(|d| {
                vec![
                    d.month.clone(),
                    d.resource.clone(),
                    d.account.clone(),
                    d.mode.to_string(),
                    d.usage_hours.clone(),
                    d.list_price.clone(),
                    d.discount.clone(),
                    d.round_off.clone(),
                    d.payable.clone(),
                ]
            })
            .collect();
        grid(&mut out, &DETAIL_HEADER, &rows);

        out.push_str("\nRESOURCES\n");
        let rows: Vec<Vec<String>> = doc
            .resources
            .iter()
            .map(|r| {
                vec![r.id.clone(), r.state.to_string(), r.mode.to_string(), r.nodes.to_string(), r.expires_at.clone().unwrap_or_else(|| "-".into())]
            })
            .collect();
        grid(&mut out, &RESOURCE_HEADER, &rows);

        out.push_str("\nACCOUNTS\n");
        let rows: Vec<Vec<String>> =
            doc.accounts.iter().map(|a| vec![a.id.clone(), a.balance.clone(), if a.in_arrears { "yes" } else { "no" }.to_string()]).collect();
        grid(&mut out, &ACCOUNT_HEADER, &rows);

        if !doc.rejections.is_empty() {
            out.push_str("\nREJECTIONS\n");
            let rows: Vec<Vec<String>> = doc
                .rejections
                .iter()
                .map(|r| vec![r.index.map_or("-".into(), |i| i.to_string()), r.r#type.clone(), r.rule.clone(), r.reason.clone()])
                .collect();
            grid(&mut out, &REJECTION_HEADER, &rows);
        }
        out.push_str(&format!("\n{} events\n", doc.events));
        out
    }

    fn grid(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
        if rows.is_empty() {
            out.push_str("  (none)\n");
            return;
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| -> String {
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            format!("  {}\n", padded.join("  ").trim_end())
        };
        out.push_str(&line(header.to_vec()));
        for row in rows {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
    }

    fn streamed(json: &[u8]) -> String {
        let mut out = Vec::new();
        write(io::Cursor::new(json), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_streamed_table_is_the_in_memory_one_on_every_fixture() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut logs: Vec<_> = std::fs::read_dir(&root).unwrap().map(|d| d.unwrap().path().join("log.jsonl")).filter(|p| p.exists()).collect();
        logs.sort();
        assert!(logs.len() >= 14, "the fixtures' logs: {}", logs.len());
        let (mut bills, mut rejections, mut without_rejections) = (0, 0, 0);
        for log in &logs {
            let envelopes = jsonl::read_file(log).unwrap();
            let middle = envelopes[envelopes.len() / 2].at;
            for upto in [Upto::All, Upto::Instant(middle), Upto::Position(envelopes.len() as u64 / 3)] {
                let doc = poolbill_replay::fold(jsonl::as_results(&envelopes), upto).unwrap().document();
                let mut json = Vec::new();
                write_log_document(io::BufReader::new(std::fs::File::open(log).unwrap()), upto, &mut json).unwrap();
                assert_eq!(streamed(&json), render(&doc), "{} as of {upto:?}", log.display());
                bills += doc.bills.len();
                rejections += doc.rejections.len();
                without_rejections += usize::from(doc.rejections.is_empty());
            }
        }
        // What the comparison covered: rows of both streamed sections, and tables without rejections.
        assert!(bills > 100 && rejections > 0 && without_rejections > 0, "{bills} bills, {rejections} rejections, {without_rejections} without");
    }

    fn bill(resource: &str, payable: &str) -> BillView {
        BillView {
            resource: resource.into(),
            account: "acct-1".into(),
            mode: "on_demand",
            item: "usage",
            start: "2023-04-08T10:00:00+08:00".into(),
            end: "2023-04-08T11:00:00+08:00".into(),
            list_price: "1.5".into(),
            discount: "0".into(),
            round_off: "0".into(),
            payable: payable.into(),
            event: 3,
        }
    }

    #[test]
    fn odd_cells_and_empty_sections_are_laid_out_as_in_memory() {
        let resource = |id: &str, expires_at: Option<&str>| ResourceView {
            id: id.into(),
            state: "running",
            nodes: 12,
            expires_at: expires_at.map(Into::into),
            kind: "pool",
            account: "acct-1".into(),
            mode: "monthly",
            spec: "gpu".into(),
            billed_as: id.into(),
            pool: None,
        };
        let rejection = |index: Option<u64>, reason: &str| RejectionView {
            index,
            r#type: "scale".into(),
            rule: "R7".into(),
            reason: reason.into(),
            at: "2023-04-08T10:00:00+08:00".into(),
        };
        let detail = DetailView {
            month: "2023-04".into(),
            account: "acct-1".into(),
            resource: "池-1".into(),
            mode: "on_demand",
            usage_hours: "1".into(),
            list_price: "1.5".into(),
            discount: "0".into(),
            round_off: "0".into(),
            payable: "1.50".into(),
            lines: 1,
        };
        let documents = [
            // Nothing at all: every section `(none)`, no rejections section.
            Document { bills: vec![], resources: vec![], accounts: vec![], rejections: vec![], events: 0, detail_bills: vec![] },
            // Wide characters (padded by characters, not bytes), escapes, blank and trailing cells.
            Document {
                bills: (0..12).map(|i| bill(if i % 5 == 0 { "池-1" } else { "pool \"q\"\t" }, if i == 11 { "" } else { "10.00" })).collect(),
                resources: vec![resource("池-1", None), resource("p", Some("2023-05-08T23:59:59+08:00"))],
                accounts: vec![AccountView { id: "acct-1".into(), balance: "-3.50".into(), in_arrears: true }],
                rejections: vec![rejection(None, "over the quota  "), rejection(Some(1234), "line one\nline two ✓")],
                events: 12345,
                detail_bills: vec![detail],
            },
        ];
        for doc in &documents {
            let json = serde_json::to_vec_pretty(doc).unwrap();
            assert_eq!(streamed(&json), render(doc));
        }
        assert!(render(&documents[1]).contains("over the quota\n"), "a row's trailing blanks are trimmed");
    }

    #[test]
    fn a_document_without_a_section_is_refused_naming_it() {
        let e = write(io::Cursor::new(br#"{"bills": [], "resources": [], "accounts": [], "rejections": [], "events": 0}"#), Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("detail_bills"), "{e}");
    }

    #[test]
    fn an_output_that_fails_stops_the_table_with_its_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let doc = Document {
            bills: (0..2000).map(|_| bill("p", "1.00")).collect(),
            resources: vec![],
            accounts: vec![],
            rejections: vec![],
            events: 1,
            detail_bills: vec![],
        };
        let e = write(io::Cursor::new(serde_json::to_vec_pretty(&doc).unwrap()), Full).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    }
}
