//! The life of one resource, read off a log: its shown state as coloured bands, its node count
//! as a step line and its charges as marks on a time axis (Beijing time), drawn as an SVG.
//!
//! [`timeline`] folds the log one envelope at a time with the same projections a replay uses,
//! so the picture agrees with `poolbill run` at every instant; [`render_svg`] draws it.

use chrono::{Datelike, Duration, Timelike};
use poolbill_domain::money::fmt_cents;
use poolbill_domain::time::{beijing_at, beijing_date, to_beijing};
use poolbill_domain::{BillingMode, Instant, Item};
use poolbill_ledger::{fold_visit, FoldError, Upto};
use poolbill_projections::{ProjectionError, Projections};
use poolbill_store::Envelope;
use rust_decimal::Decimal;
use svg::node::element::{Group, Line, Path, Polygon, Rectangle, Text, Title};
use svg::Node;

/// One resource's life from its first event to the log's last instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    pub resource: String,
    /// Consecutive, non-overlapping, from `start` to `end`.
    pub bands: Vec<Band>,
    /// The node count (a package's quantity) from each instant it changed.
    pub nodes: Vec<(Instant, u32)>,
    /// The flow-bill lines of the resource (or of its billed id), in log order.
    pub charges: Vec<Charge>,
    pub start: Instant,
    pub end: Instant,
}

/// A stretch in one shown state (and one billing mode).
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    /// creating, running, expired, grace, frozen, released, deleted or stopped.
    pub state: String,
    /// How the resource is billed meanwhile: on_demand, monthly, yearly, package or
    /// dedicated_pool (a job on a dedicated pool). A conversion starts a new band.
    pub mode: String,
    pub from: Instant,
    pub to: Instant,
}

/// One flow-bill line (R5) of the resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Charge {
    /// The instant of the `charged` event.
    pub at: Instant,
    pub start: Instant,
    pub end: Instant,
    pub item: String,
    pub mode: String,
    pub payable: Decimal,
}

/// What a person sees of the resource after one event.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    state: &'static str,
    mode: &'static str,
    nodes: u32,
    billed_as: String,
}

fn seen(projections: &Projections, resource: &str) -> Option<Seen> {
    let state = &projections.state;
    if let Some(p) = state.pools.get(resource) {
        return Some(Seen { state: p.shown_state(), mode: p.mode.as_str(), nodes: p.nodes, billed_as: p.id.clone() });
    }
    if let Some(j) = state.jobs.get(resource) {
        let mode = if j.pool.is_some() { "dedicated_pool" } else { BillingMode::OnDemand.as_str() };
        return Some(Seen { state: j.shown_state(), mode, nodes: j.nodes, billed_as: j.billing_id() });
    }
    if let Some(p) = state.packages.get(resource) {
        let shown = if p.expired { "expired" } else { "running" };
        return Some(Seen { state: shown, mode: BillingMode::Package.as_str(), nodes: p.quantity, billed_as: p.id.clone() });
    }
    None
}

/// Fold `envelopes` (a whole log, in order) and read `resource` (a pool, job or package id)
/// after each one: a change of shown state or billing mode starts a new band, a change of node
/// count a new step. Charges are the `charged` lines whose resource is `resource` or its billed
/// id (R5: `training_<job>`, `<service>-<model>`). The timeline ends at the log's last instant.
/// Why a timeline cannot be drawn.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("replaying the log")]
    Replay(#[from] ProjectionError),
    #[error("no resource {0:?} in the log (not a pool, job or package id)")]
    NoSuchResource(String),
    #[error("reading the log")]
    Log(#[source] poolbill_store::StoreError),
}

pub fn timeline(envelopes: &[Envelope], resource: &str) -> Result<Timeline, TimelineError> {
    timeline_of(envelopes, resource, None)
}

/// [`timeline`] from a store: only the resource's history is read (its tags, its account's
/// arrears, the catalog: [`crate::history::of_resource`]), and the picture ends at the log's
/// last instant as it does for the whole log.
pub fn timeline_in(store: &dyn poolbill_store::EventStore, resource: &str) -> Result<Timeline, TimelineError> {
    let failed = |e| match e {
        crate::history::HistoryError::Store(e) => TimelineError::Log(e),
        crate::history::HistoryError::Decode { position, source } => TimelineError::Replay(ProjectionError { position, source }),
    };
    let (mut history, ids) = crate::history::of_resource(store, resource).map_err(failed)?;
    crate::history::all_usage(store, &ids, &mut history).map_err(failed)?;
    let envelopes: Vec<Envelope> = history.into_values().map(|(envelope, _)| envelope).collect();
    timeline_of(&envelopes, resource, store.last_instant().map_err(TimelineError::Log)?)
}

/// The timeline of `resource` in `envelopes` (a log, or a resource's history in log order),
/// ending at `end` (or at the last envelope's instant).
fn timeline_of(envelopes: &[Envelope], resource: &str, end: Option<Instant>) -> Result<Timeline, TimelineError> {
    let mut bands: Vec<Band> = Vec::new();
    let mut nodes: Vec<(Instant, u32)> = Vec::new();
    let mut billed_as: Option<String> = None;
    let look = |projections: &Projections, envelope: &&Envelope, _| {
        let Some(now) = seen(projections, resource) else { return };
        let at = envelope.at;
        match bands.last_mut() {
            Some(band) if band.state == now.state && band.mode == now.mode => {}
            // Several events at one instant (purchase, then ready): the last one is what shows.
            Some(band) if band.from == at => {
                band.state = now.state.to_string();
                band.mode = now.mode.to_string();
                let len = bands.len();
                if len >= 2 && bands[len - 2].state == bands[len - 1].state && bands[len - 2].mode == bands[len - 1].mode {
                    bands.pop();
                }
            }
            last => {
                if let Some(band) = last {
                    band.to = at;
                }
                bands.push(Band { state: now.state.to_string(), mode: now.mode.to_string(), from: at, to: at });
            }
        }
        match nodes.last_mut() {
            Some((_, n)) if *n == now.nodes => {}
            Some((since, n)) if *since == at => {
                *n = now.nodes;
                let len = nodes.len();
                if len >= 2 && nodes[len - 2].1 == nodes[len - 1].1 {
                    nodes.pop();
                }
            }
            _ => nodes.push((at, now.nodes)),
        }
        billed_as = Some(now.billed_as);
    };
    let projections = fold_visit(envelopes.iter().map(Ok), Upto::All, look).map_err(|e| match e {
        FoldError::Projection(p) => TimelineError::Replay(p),
        FoldError::Store(e) => TimelineError::Log(e),
    })?;
    let Some(billed_as) = billed_as else {
        return Err(TimelineError::NoSuchResource(resource.to_string()));
    };
    let end = end.or(projections.last_instant).expect("a log that shows the resource has an instant");
    if let Some(band) = bands.last_mut() {
        band.to = end;
    }
    let start = bands.first().map(|b| b.from).unwrap_or(end);
    let charges = projections
        .bills
        .iter()
        .filter(|b| b.line.resource == resource || b.line.resource == billed_as)
        .map(|b| Charge {
            at: b.at,
            start: b.line.start,
            end: b.line.end,
            item: b.line.item.as_str().to_string(),
            mode: b.line.mode.as_str().to_string(),
            payable: b.line.amounts.payable,
        })
        .collect();
    Ok(Timeline { resource: resource.to_string(), bands, nodes, charges, start, end })
}

// ---------------------------------------------------------------------------------------------
// Drawing

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 96.0;
const RIGHT: f64 = 1168.0;
const FONT: &str = "DejaVu Sans, Verdana, Arial, sans-serif";
const INK: &str = "#1a1a1a";
const MUTED: &str = "#555555";
const GRID: &str = "#d9d9d9";
/// The node-count line: vermillion, a colour no state uses.
const NODE_INK: &str = "#C0392B";

/// Every state a resource can show, in legend order, with its fill: the Okabe–Ito palette
/// (distinguishable with the common colour-vision deficiencies) and two greys for the gone.
const STATES: [(&str, &str); 8] = [
    ("creating", "#56B4E9"),
    ("running", "#009E73"),
    ("stopped", "#F0E442"),
    ("grace", "#CC79A7"),
    ("expired", "#E69F00"),
    ("frozen", "#0072B2"),
    ("released", "#BBBBBB"),
    ("deleted", "#666666"),
];

fn state_fill(state: &str) -> &'static str {
    STATES.iter().find(|(s, _)| *s == state).map(|(_, c)| *c).unwrap_or("#999999")
}

/// Black or white, whichever reads better on `fill` (WCAG relative luminance).
fn text_on(fill: &str) -> &'static str {
    let channel = |i: usize| {
        let c = u8::from_str_radix(&fill[i..i + 2], 16).unwrap_or(0) as f64 / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let l = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
    // Contrast with black (l + .05) / .05 against white 1.05 / (l + .05).
    if (l + 0.05) / 0.05 >= 1.05 / (l + 0.05) {
        "#000000"
    } else {
        "#ffffff"
    }
}

fn mode_words(mode: &str) -> &str {
    match mode {
        "on_demand" => "on demand",
        "dedicated_pool" => "on a dedicated pool",
        other => other,
    }
}

/// A conservative width of `text` in DejaVu Sans at `size` px (its glyphs average ~0.6 em).
fn text_width(text: &str, size: f64, bold: bool) -> f64 {
    text.chars().count() as f64 * size * if bold { 0.68 } else { 0.62 }
}

fn bj(t: Instant, format: &str) -> String {
    to_beijing(t).format(format).to_string()
}

/// Seconds since the Unix epoch.
fn secs(t: Instant) -> f64 {
    t.timestamp() as f64
}

struct Scale {
    t0: f64,
    t1: f64,
}

impl Scale {
    fn x(&self, t: Instant) -> f64 {
        LEFT + (secs(t) - self.t0) / (self.t1 - self.t0) * (RIGHT - LEFT)
    }
}

fn text(x: f64, y: f64, size: f64, content: impl Into<String>) -> Text {
    Text::new(content).set("x", round(x)).set("y", round(y)).set("font-size", size).set("fill", INK)
}

fn line(x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) -> Line {
    Line::new().set("x1", round(x1)).set("y1", round(y1)).set("x2", round(x2)).set("y2", round(y2)).set("stroke", stroke).set("stroke-width", width)
}

fn rect(x: f64, y: f64, w: f64, h: f64, fill: &str) -> Rectangle {
    Rectangle::new().set("x", round(x)).set("y", round(y)).set("width", round(w)).set("height", round(h)).set("fill", fill)
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Ticks of the time axis: the finest step that leaves room for each label.
struct Ticks {
    major: Vec<Instant>,
    minor: Vec<Instant>,
    format: &'static str,
    unit: &'static str,
}

#[derive(Clone, Copy)]
enum Step {
    Hours(i64),
    Days(i64),
    Weeks(i64),
    Months(u32),
}

fn ticks(t0: Instant, t1: Instant) -> Ticks {
    let span = (secs(t1) - secs(t0)).max(1.0);
    let same_year = to_beijing(t0).year() == to_beijing(t1).year();
    let plot = RIGHT - LEFT;
    let options: [(Step, i64, &'static str, Option<Step>); 11] = [
        (Step::Hours(1), 3600, "%m-%d %H:%M", None),
        (Step::Hours(2), 7200, "%m-%d %H:%M", Some(Step::Hours(1))),
        (Step::Hours(3), 10800, "%m-%d %H:%M", Some(Step::Hours(1))),
        (Step::Hours(6), 21600, "%m-%d %H:%M", Some(Step::Hours(1))),
        (Step::Hours(12), 43200, "%m-%d %H:%M", Some(Step::Hours(3))),
        (Step::Days(1), 86400, "%m-%d", Some(Step::Hours(6))),
        (Step::Days(2), 172800, "%m-%d", Some(Step::Days(1))),
        (Step::Weeks(1), 604800, "%m-%d", Some(Step::Days(1))),
        (Step::Weeks(2), 1209600, "%m-%d", Some(Step::Days(1))),
        (Step::Months(1), 2629800, "%Y-%m", Some(Step::Weeks(1))),
        (Step::Months(3), 7889400, "%Y-%m", Some(Step::Months(1))),
    ];
    let mut chosen = options[options.len() - 1];
    for option in options {
        let format = if same_year || option.2 == "%Y-%m" { option.2 } else { "%Y-%m-%d" };
        let label = text_width(&bj(t0, format), 11.0, false) + 14.0;
        if plot / (span / option.1 as f64) >= label {
            chosen = option;
            break;
        }
    }
    let (step, _, mut format, minor) = chosen;
    if !same_year && format != "%Y-%m" {
        format = if format == "%m-%d" { "%Y-%m-%d" } else { "%Y-%m-%d %H:%M" };
    }
    let unit = match step {
        Step::Hours(_) => "hours",
        Step::Days(_) => "days",
        Step::Weeks(_) => "weeks (Mondays)",
        Step::Months(_) => "months",
    };
    Ticks { major: instants(step, t0, t1), minor: minor.map(|m| instants(m, t0, t1)).unwrap_or_default(), format, unit }
}

/// Every instant of `step` (aligned on Beijing's clock and calendar) within `[t0, t1]`.
fn instants(step: Step, t0: Instant, t1: Instant) -> Vec<Instant> {
    let local = to_beijing(t0);
    let midnight = beijing_at(local.date_naive(), 0, 0, 0);
    let mut t = match step {
        Step::Hours(h) => midnight + Duration::hours(local.hour() as i64 / h * h),
        Step::Days(_) => midnight,
        Step::Weeks(_) => midnight - Duration::days(local.weekday().num_days_from_monday() as i64),
        Step::Months(_) => beijing_at(local.date_naive().with_day(1).expect("day 1 exists"), 0, 0, 0),
    };
    let mut out = Vec::new();
    while t <= t1 {
        if t >= t0 {
            out.push(t);
        }
        t = match step {
            Step::Hours(h) => t + Duration::hours(h),
            Step::Days(d) => t + Duration::days(d),
            Step::Weeks(w) => t + Duration::weeks(w),
            Step::Months(m) => {
                let d = beijing_date(t);
                beijing_at(poolbill_domain::time::add_months_clamped(d, m), 0, 0, 0)
            }
        };
    }
    out
}

/// A label to place in one of a few rows without overlapping another.
struct Placed {
    row: usize,
    left: f64,
    right: f64,
}

/// Rows of labels: each new label takes the first row where it overlaps nothing.
struct Rows {
    rows: Vec<Vec<(f64, f64)>>,
}

impl Rows {
    fn new(count: usize) -> Rows {
        Rows { rows: vec![Vec::new(); count] }
    }
    /// How many rows hold a label.
    fn used(&self) -> usize {
        self.rows.iter().rposition(|r| !r.is_empty()).map_or(0, |i| i + 1)
    }
    fn place(&mut self, center: f64, width: f64) -> Option<Placed> {
        let left = (center - width / 2.0).clamp(LEFT - 4.0, WIDTH - 8.0 - width);
        let right = left + width;
        for (row, taken) in self.rows.iter_mut().enumerate() {
            if taken.iter().all(|(l, r)| right + 8.0 <= *l || left >= *r + 8.0) {
                taken.push((left, right));
                return Some(Placed { row, left, right });
            }
        }
        None
    }
}

/// Usage lines (metered by the hour) rather than subscription charges or refunds.
fn is_usage(c: &Charge) -> bool {
    c.item == Item::Compute.as_str() || c.item == Item::Storage.as_str() || c.mode == BillingMode::Package.as_str()
}

/// A label for one charge or a group of usage lines.
struct ChargeLabel {
    text: String,
    from: Instant,
    to: Instant,
    /// Higher first: subscription charges always, then the largest usage.
    priority: (u8, Decimal),
}

/// Usage lines grouped by Beijing day, or by unbroken runs (lines at most a cycle apart), or
/// all together: the finest grouping whose labels all fit is drawn.
fn usage_groups(usage: &[&Charge], by: &str) -> Vec<ChargeLabel> {
    let mut groups: Vec<Vec<&Charge>> = Vec::new();
    for c in usage {
        let joins = match groups.last().and_then(|g| g.last()) {
            None => false,
            Some(prev) => match by {
                "day" => beijing_date(prev.at) == beijing_date(c.at),
                "run" => (c.at - prev.at) <= Duration::hours(1),
                _ => true,
            },
        };
        if joins {
            groups.last_mut().expect("joined a group").push(c);
        } else {
            groups.push(vec![c]);
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let total: Decimal = g.iter().map(|c| c.payable).sum();
            let (first, last) = (g[0].at, g[g.len() - 1].at);
            let when = if beijing_date(first) == beijing_date(last) {
                bj(first, "%m-%d")
            } else {
                format!("{}–{}", bj(first, "%m-%d"), bj(last, "%m-%d"))
            };
            let lines = if g.len() == 1 { "1 line".to_string() } else { format!("{} lines", g.len()) };
            ChargeLabel { text: format!("usage {when}: {} ({lines})", fmt_cents(total)), from: first, to: last, priority: (0, total) }
        })
        .collect()
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// How a band is labelled: inside it when the words fit, else in a note above it.
enum BandLabel {
    Inside { name: String, since: Option<String> },
    Note { text: String, at: f64, placed: Placed },
    None,
}

/// Draw the timeline: a self-contained SVG 1200 px wide.
pub fn render_svg(t: &Timeline) -> String {
    // The drawn span: the timeline's, widened so that a state entered at the very end (a
    // release at the log's last instant) still shows as a sliver.
    let mut t1 = t.end.max(t.start + Duration::hours(1));
    if t.bands.last().is_some_and(|b| b.to <= b.from) {
        t1 += Duration::seconds(((secs(t1) - secs(t.start)) * 0.03) as i64);
    }
    let scale = Scale { t0: secs(t.start), t1: secs(t1) };
    let ticks = ticks(t.start, t1);
    let band_x = |b: &Band| (scale.x(b.from), scale.x(if b.to > b.from { b.to } else { t1 }));

    // Band labels first (narrow bands get notes above, in as many rows as they need)…
    let mut notes = Rows::new(3);
    let band_labels: Vec<BandLabel> = t
        .bands
        .iter()
        .map(|band| {
            let (x0, x1) = band_x(band);
            // The billing mode matters while the resource runs (and is billed), not after.
            let name = if matches!(band.state.as_str(), "creating" | "running" | "grace") {
                format!("{} · {}", band.state, mode_words(&band.mode))
            } else {
                band.state.clone()
            };
            let since = format!("from {}", bj(band.from, "%m-%d %H:%M"));
            let room = (x1 - x0) - 12.0;
            if room >= text_width(&name, 13.0, true).max(text_width(&since, 11.0, false)) {
                BandLabel::Inside { name, since: Some(since) }
            } else if room >= text_width(&band.state, 13.0, true).max(text_width(&since, 11.0, false) - 30.0) {
                BandLabel::Inside { name: band.state.clone(), since: Some(bj(band.from, "%m-%d %H:%M")) }
            } else {
                let text = format!("{name} {since}");
                let width = text_width(&text, 11.0, false);
                let at = (x0 + x1) / 2.0;
                match notes.place(at + width / 2.0 - 4.0, width) {
                    Some(placed) => BandLabel::Note { text, at, placed },
                    None => BandLabel::None,
                }
            }
        })
        .collect();
    let note_rows = notes.used();

    // …and charge labels: subscription charges always, usage grouped as finely as fits.
    let subscription: Vec<&Charge> = t.charges.iter().filter(|c| !is_usage(c)).collect();
    let usage: Vec<&Charge> = t.charges.iter().filter(|c| is_usage(c)).collect();
    let mut placed: Vec<(ChargeLabel, Placed)> = Vec::new();
    let mut left_out = 0usize;
    let mut rows_used = 0usize;
    for by in ["day", "run", "all"] {
        let mut labels: Vec<ChargeLabel> = subscription
            .iter()
            .map(|c| ChargeLabel { text: format!("{} {}", c.item, fmt_cents(c.payable)), from: c.at, to: c.at, priority: (1, c.payable.abs()) })
            .collect();
        labels.extend(usage_groups(&usage, by));
        labels.sort_by_key(|l| std::cmp::Reverse(l.priority));
        let mut rows = Rows::new(3);
        let mut fits = Vec::new();
        let mut missed = 0;
        for label in labels {
            let center = (scale.x(label.from) + scale.x(label.to)) / 2.0;
            match rows.place(center, text_width(&label.text, 11.0, label.priority.0 == 1)) {
                Some(p) => fits.push((label, p)),
                None => missed += 1,
            }
        }
        placed = fits;
        left_out = missed;
        rows_used = rows.used();
        if missed == 0 {
            break;
        }
    }

    // Vertical layout, top to bottom.
    let legend_y = 78.0;
    let note_h = 16.0;
    let band_top = legend_y + 22.0 + note_rows as f64 * note_h + if note_rows > 0 { 8.0 } else { 0.0 };
    let band_h = 46.0;
    let nodes_top = band_top + band_h + 26.0;
    let nodes_h = 64.0;
    let row_h = 17.0;
    let axis_y = nodes_top + nodes_h + 30.0 + rows_used as f64 * row_h;
    let footer_y = axis_y + 66.0;
    let height = footer_y + 22.0;

    let mut doc = svg::Document::new()
        .set("width", WIDTH)
        .set("height", height)
        .set("viewBox", (0, 0, WIDTH, round(height)))
        .set("font-family", FONT)
        .add(Title::new(format!("Timeline of {}", t.resource)))
        .add(rect(0.0, 0.0, WIDTH, height, "#ffffff"));

    // Title and what the picture covers.
    doc.append(text(LEFT, 30.0, 20.0, format!("{} — state, nodes and charges", t.resource)).set("font-weight", "bold"));
    doc.append(
        text(LEFT, 50.0, 12.0, format!("{} → {} (Beijing time, +08:00)", bj(t.start, "%Y-%m-%d %H:%M:%S"), bj(t.end, "%Y-%m-%d %H:%M:%S")))
            .set("fill", MUTED),
    );

    // Legend: the states this resource went through, then the line and the marks it has.
    let mut legend = Group::new().set("class", "legend").set("font-size", 12);
    let mut x = LEFT;
    for (state, fill) in STATES.iter().filter(|(s, _)| t.bands.iter().any(|b| b.state == *s)) {
        legend.append(rect(x, legend_y - 11.0, 14.0, 14.0, fill).set("stroke", "#444444").set("stroke-width", 0.5));
        legend.append(text(x + 19.0, legend_y, 12.0, *state));
        x += 19.0 + text_width(state, 12.0, false) + 18.0;
    }
    x += 6.0;
    legend.append(line(x, legend_y - 4.0, x + 22.0, legend_y - 4.0, NODE_INK, 2.5));
    legend.append(text(x + 27.0, legend_y, 12.0, "nodes"));
    x += 27.0 + text_width("nodes", 12.0, false) + 18.0;
    if !usage.is_empty() {
        legend.append(line(x + 4.0, legend_y - 10.0, x + 4.0, legend_y + 2.0, INK, 1.2));
        legend.append(text(x + 12.0, legend_y, 12.0, "usage charge"));
        x += 12.0 + text_width("usage charge", 12.0, false) + 18.0;
    }
    if !subscription.is_empty() {
        legend.append(diamond(x + 5.0, legend_y - 4.0, 5.5, INK));
        legend.append(text(x + 15.0, legend_y, 12.0, "subscription charge or refund"));
    }
    doc.append(legend);

    // Vertical grid at the major ticks, behind the tracks.
    let mut grid = Group::new();
    for tick in &ticks.major {
        let x = scale.x(*tick);
        grid.append(line(x, nodes_top - 6.0, x, axis_y, GRID, 1.0));
    }
    doc.append(grid);

    // Track names.
    let name = |y: f64, words: &str| text(LEFT - 10.0, y, 12.0, words).set("text-anchor", "end").set("fill", MUTED);
    doc.append(name(band_top + band_h / 2.0 + 4.0, "state"));
    doc.append(name(nodes_top + nodes_h / 2.0 + 4.0, "nodes").set("x", LEFT - 28.0));
    if !t.charges.is_empty() {
        doc.append(name(axis_y - 2.0, "charges"));
    }

    // State bands, with white edges between them, then their labels and notes.
    let mut bands = Group::new();
    let mut edges = Group::new();
    let mut leaders = Group::new();
    let mut words = Group::new();
    for (band, label) in t.bands.iter().zip(&band_labels) {
        let (x0, x1) = band_x(band);
        let fill = state_fill(&band.state);
        let mut r = rect(x0, band_top, (x1 - x0).max(1.5), band_h, fill);
        r.append(Title::new(format!(
            "{} ({}) {} → {}",
            band.state,
            mode_words(&band.mode),
            bj(band.from, "%Y-%m-%d %H:%M:%S"),
            bj(band.to, "%Y-%m-%d %H:%M:%S")
        )));
        bands.append(r);
        if band.from > t.start {
            edges.append(line(x0, band_top, x0, band_top + band_h, "#ffffff", 1.5));
        }
        let ink = text_on(fill);
        match label {
            BandLabel::Inside { name, since } => {
                words.append(text(x0 + 6.0, band_top + 19.0, 13.0, name.clone()).set("font-weight", "bold").set("fill", ink));
                if let Some(since) = since {
                    words.append(text(x0 + 6.0, band_top + 36.0, 11.0, since.clone()).set("fill", ink));
                }
            }
            BandLabel::Note { text: note, at, placed } => {
                let y = band_top - 8.0 - placed.row as f64 * note_h;
                leaders.append(line(*at, y + 2.0, *at, band_top, INK, 0.8));
                words.append(rect(placed.left - 2.0, y - 11.0, placed.right - placed.left + 4.0, 14.0, "#ffffff"));
                words.append(text(placed.left, y, 11.0, note.clone()));
            }
            BandLabel::None => {}
        }
    }
    doc.append(bands);
    doc.append(edges);
    doc.append(rect(LEFT, band_top, RIGHT - LEFT, band_h, "none").set("stroke", "#444444").set("stroke-width", 0.8));
    doc.append(leaders);
    doc.append(words);

    // Nodes: a step line with its own small axis, drawn while the resource exists.
    let max_nodes = t.nodes.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let ny = |n: u32| nodes_top + nodes_h - (n as f64 / max_nodes as f64) * (nodes_h - 8.0);
    let mut axis = Group::new();
    axis.append(line(LEFT, nodes_top, LEFT, nodes_top + nodes_h, INK, 1.0));
    let step = ((max_nodes as f64) / 4.0).ceil().max(1.0) as u32;
    let mut n = 0;
    while n <= max_nodes {
        axis.append(line(LEFT - 4.0, ny(n), LEFT, ny(n), INK, 1.0));
        axis.append(text(LEFT - 7.0, ny(n) + 4.0, 11.0, n.to_string()).set("text-anchor", "end"));
        n += step;
    }
    axis.append(line(LEFT, ny(0), RIGHT, ny(0), "#999999", 0.8));
    doc.append(axis);
    let gone_at = t.bands.iter().find(|b| b.state == "released" || b.state == "deleted").map(|b| b.from).unwrap_or(t.end);
    let mut steps = Vec::new();
    for (i, (since, count)) in t.nodes.iter().enumerate() {
        if *since > gone_at {
            break;
        }
        let until = t.nodes.get(i + 1).map(|(s, _)| *s).unwrap_or(gone_at).min(gone_at);
        steps.push((*since, until, *count));
    }
    if !steps.is_empty() {
        let mut data = svg::node::element::path::Data::new();
        for (i, (since, until, count)) in steps.iter().enumerate() {
            let (x0, x1, y) = (round(scale.x(*since)), round(scale.x(*until)), round(ny(*count)));
            data = if i == 0 { data.move_to((x0, y)) } else { data.vertical_line_to(y) };
            data = data.horizontal_line_to(x1);
        }
        doc.append(Path::new().set("d", data).set("fill", "none").set("stroke", NODE_INK).set("stroke-width", 2.5));
        // The count of each step: above it when it fits inside, else below it (where the line
        // does not run), never over another label.
        let mut taken: Vec<(f64, f64, f64)> = Vec::new();
        for (i, (since, until, count)) in steps.iter().enumerate() {
            let label = if i == 0 {
                plural(*count as usize, "node")
            } else {
                format!("{} from {}", plural(*count as usize, "node"), bj(*since, "%m-%d %H:%M"))
            };
            let w = text_width(&label, 11.0, true);
            let (x0, x1, y) = (scale.x(*since), scale.x(*until), ny(*count));
            let rises_next = steps.get(i + 1).is_none_or(|s| s.2 >= *count);
            let spot = if x1 - x0 >= w + 8.0 {
                Some((x0 + 4.0, y - 6.0))
            } else if rises_next && ny(0) - y >= 16.0 {
                Some((x0 + 4.0, y + 13.0))
            } else {
                None
            };
            let Some((x, y)) = spot else { continue };
            let free = x + w <= RIGHT && taken.iter().all(|(l, r, ty)| (ty - y).abs() >= 13.0 || x + w + 6.0 <= *l || x >= r + 6.0);
            if free {
                doc.append(text(x, y, 11.0, label).set("fill", NODE_INK).set("font-weight", "bold"));
                taken.push((x, x + w, y));
            }
        }
    }

    // Charge labels in rows above the axis (the nearest first), each tied to its mark, or to
    // a bracket over the lines it sums.
    let row_y = |row: usize| axis_y - 18.0 - row as f64 * row_h;
    let mut leaders = Group::new();
    let mut labels = Group::new().set("font-size", 11);
    for (label, p) in &placed {
        let (xa, xb) = (scale.x(label.from), scale.x(label.to));
        let anchor = ((xa + xb) / 2.0).clamp(p.left + 2.0, p.right - 2.0);
        let y = row_y(p.row);
        if xb - xa >= 3.0 {
            leaders.append(line(xa, axis_y - 9.0, xb, axis_y - 9.0, "#777777", 1.0));
            leaders.append(line(xa, axis_y - 12.0, xa, axis_y - 6.0, "#777777", 1.0));
            leaders.append(line(xb, axis_y - 12.0, xb, axis_y - 6.0, "#777777", 1.0));
            leaders.append(line((xa + xb) / 2.0, axis_y - 9.0, anchor, y + 3.0, "#777777", 0.8));
        } else {
            leaders.append(line(xa, axis_y - 7.0, anchor, y + 3.0, "#777777", 0.8));
        }
        labels.append(rect(p.left - 2.0, y - 11.0, p.right - p.left + 4.0, 14.0, "#ffffff"));
        let mut words = text(p.left, y, 11.0, label.text.clone());
        if label.priority.0 == 1 {
            words = words.set("font-weight", "bold");
        }
        labels.append(words);
    }
    doc.append(leaders);
    doc.append(labels);

    // The time axis, its ticks, and every charge as a mark on it.
    let mut axis = Group::new();
    axis.append(line(LEFT, axis_y, RIGHT, axis_y, INK, 1.2));
    for tick in &ticks.minor {
        let x = scale.x(*tick);
        axis.append(line(x, axis_y, x, axis_y + 4.0, INK, 0.8));
    }
    for tick in &ticks.major {
        let x = scale.x(*tick);
        axis.append(line(x, axis_y, x, axis_y + 8.0, INK, 1.2));
        axis.append(text(x, axis_y + 22.0, 11.0, bj(*tick, ticks.format)).set("text-anchor", "middle"));
    }
    for c in &usage {
        let x = scale.x(c.at);
        axis.append(line(x, axis_y - 6.0, x, axis_y, INK, 1.0).set("stroke-opacity", 0.7));
    }
    for c in &subscription {
        let mut mark = diamond(scale.x(c.at), axis_y, 6.0, if c.payable < Decimal::ZERO { "#ffffff" } else { INK });
        mark.append(Title::new(format!("{} {} at {}", c.item, fmt_cents(c.payable), bj(c.at, "%Y-%m-%d %H:%M:%S"))));
        axis.append(mark);
    }
    let years = if to_beijing(t.start).year() == to_beijing(t1).year() {
        to_beijing(t.start).year().to_string()
    } else {
        format!("{}–{}", to_beijing(t.start).year(), to_beijing(t1).year())
    };
    axis.append(
        text((LEFT + RIGHT) / 2.0, axis_y + 42.0, 12.0, format!("{years}, Beijing time (+08:00); ticks in {}", ticks.unit))
            .set("text-anchor", "middle")
            .set("fill", MUTED),
    );
    doc.append(axis);

    // Totals, so that what is not labelled is still accounted for.
    let sum = |cs: &[&Charge]| cs.iter().map(|c| c.payable).sum::<Decimal>();
    let mut footer = format!("{}, payable {}", plural(t.charges.len(), "charge line"), fmt_cents(t.charges.iter().map(|c| c.payable).sum()));
    let mut parts = Vec::new();
    if !subscription.is_empty() {
        parts.push(format!("subscription {} ({})", fmt_cents(sum(&subscription)), plural(subscription.len(), "line")));
    }
    if !usage.is_empty() {
        parts.push(format!("usage {} ({})", fmt_cents(sum(&usage)), plural(usage.len(), "line")));
    }
    if !parts.is_empty() {
        footer.push_str(&format!(": {}", parts.join(", ")));
    }
    if left_out > 0 {
        footer.push_str(&format!("; {} not labelled for room", plural(left_out, "group")));
    }
    doc.append(text(LEFT, footer_y, 12.0, footer));

    doc.to_string()
}

fn diamond(x: f64, y: f64, r: f64, fill: &str) -> Polygon {
    let points = [(x, y - r), (x + r, y), (x, y + r), (x - r, y)].map(|(a, b)| format!("{},{}", round(a), round(b))).join(" ");
    Polygon::new().set("points", points).set("fill", fill).set("stroke", INK).set("stroke-width", 1)
}
