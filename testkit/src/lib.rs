//! What the workspace's tests share: instants and amounts written as text, builders for the
//! commands tests issue again and again, and a given/when/then harness over events (the same
//! pure steps the engine takes: `handle`, then `tick` as the clock passes).
//!
//! Tests only: every helper panics, naming its input, on what a test should never write.

use chrono::DateTime;
use poolbill_domain::{handle, tick, BillingMode, Command, Event, Instant, PoolType, Price, Rejection, Rule, State, Term};
use poolbill_projections::Projections;
use poolbill_replay::rerun::{rerun, to_envelopes, Recorded, WhatIf};
use poolbill_store::Envelope;
use rust_decimal::Decimal;

/// The seeds' dedicated 8-core spec (3.50/h, 1750/month, 17500/year).
pub const SPEC: &str = "modelarts.vm.cpu.8ud";
/// The seeds' public-pool spec (3.40/h).
pub const PUBLIC_SPEC: &str = "modelarts.vm.cpu.8u.public";

/// An RFC 3339 instant with an offset.
pub fn t(text: &str) -> Instant {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text:?} is not an RFC 3339 instant: {e}"))
}

/// A decimal amount.
pub fn d(text: &str) -> Decimal {
    text.parse().unwrap_or_else(|e| panic!("{text:?} is not a decimal: {e}"))
}

/// Command builders, with the defaults tests use most.
pub mod cmd {
    use super::*;

    /// `set_price`: hourly, monthly and yearly as given (`None`: no such price).
    pub fn price(spec: &str, hourly: Option<&str>, monthly: Option<&str>, yearly: Option<&str>) -> Command {
        Command::SetPrice { spec: spec.into(), price: Price { hourly: hourly.map(d), monthly: monthly.map(d), yearly: yearly.map(d) } }
    }

    /// The seeds' prices of [`SPEC`]: 3.50/h, 1750/month, 17500/year.
    pub fn seed_price() -> Command {
        price(SPEC, Some("3.50"), Some("1750.00"), Some("17500.00"))
    }

    /// `open_account` at level standard, without a discount.
    pub fn open_account(account: &str, balance: &str) -> Command {
        open_account_discounted(account, balance, "0")
    }

    /// `open_account` at level standard with a discount rate (R2).
    pub fn open_account_discounted(account: &str, balance: &str, discount: &str) -> Command {
        Command::OpenAccount { account: account.into(), balance: d(balance), level: "standard".into(), discount: d(discount) }
    }

    pub fn top_up(account: &str, amount: &str) -> Command {
        Command::TopUp { account: account.into(), amount: d(amount) }
    }

    pub fn scale(pool: &str, nodes: u32) -> Command {
        Command::Scale { pool: pool.into(), nodes: Some(nodes), spec: None }
    }

    /// A purchase of one dedicated [`SPEC`] node on demand, ready at once; change what differs.
    pub fn purchase(account: &str, pool: &str) -> Purchase {
        Purchase {
            account: account.into(),
            pool: pool.into(),
            spec: SPEC.into(),
            nodes: 1,
            mode: BillingMode::OnDemand,
            term: None,
            pool_type: PoolType::Dedicated,
            region: None,
            ready: true,
        }
    }

    /// A `purchase` being built; `.into()` (or [`Purchase::build`]) gives the command.
    #[derive(Clone, Debug)]
    pub struct Purchase {
        account: String,
        pool: String,
        spec: String,
        nodes: u32,
        mode: BillingMode,
        term: Option<Term>,
        pool_type: PoolType,
        region: Option<String>,
        ready: bool,
    }

    impl Purchase {
        pub fn nodes(mut self, nodes: u32) -> Purchase {
            self.nodes = nodes;
            self
        }

        pub fn spec(mut self, spec: &str) -> Purchase {
            self.spec = spec.into();
            self
        }

        /// Not ready yet: pay-per-use billing waits for `ready` (R4).
        pub fn not_ready(mut self) -> Purchase {
            self.ready = false;
            self
        }

        /// Ready at purchase (R4).
        pub fn ready(mut self) -> Purchase {
            self.ready = true;
            self
        }

        /// On the public pool.
        pub fn public(mut self) -> Purchase {
            self.pool_type = PoolType::Public;
            self
        }

        /// A subscription of `n` months (R3), not ready at purchase (as the seeds buy them).
        pub fn monthly(mut self, n: u32) -> Purchase {
            (self.mode, self.term, self.ready) = (BillingMode::Monthly, Some(Term::Months(n)), false);
            self
        }

        /// A subscription of `n` years (R3), not ready at purchase.
        pub fn yearly(mut self, n: u32) -> Purchase {
            (self.mode, self.term, self.ready) = (BillingMode::Yearly, Some(Term::Years(n)), false);
            self
        }

        pub fn build(self) -> Command {
            let Purchase { account, pool, spec, nodes, mode, term, pool_type, region, ready } = self;
            Command::Purchase { account, pool, spec, nodes, mode, term, pool_type, region, ready }
        }
    }

    impl From<Purchase> for Command {
        fn from(p: Purchase) -> Command {
            p.build()
        }
    }
}

/// Given commands at instants (each id `test:<index>`), the log and projections they make when
/// the clock passes `until`: what the engine would record, without a store.
#[derive(Clone, Debug, Default)]
pub struct Given {
    commands: Vec<Recorded>,
}

impl Given {
    pub fn new() -> Given {
        Given::default()
    }

    /// Commands as `(instant, command)` pairs, in order.
    pub fn commands<S: AsRef<str>>(commands: impl IntoIterator<Item = (S, Command)>) -> Given {
        commands.into_iter().fold(Given::new(), |given, (at, command)| given.at(at.as_ref(), command))
    }

    /// And `command` at `at`.
    pub fn at(mut self, at: &str, command: impl Into<Command>) -> Given {
        let index = self.commands.len();
        self.commands.push(Recorded { id: Some(format!("test:{index}")), at: t(at), index: Some(index as u64), command: command.into() });
        self
    }

    /// The log, the clock having passed `until`.
    pub fn log(&self, until: &str) -> Vec<Envelope> {
        to_envelopes(&rerun(&self.commands, t(until), &WhatIf::default()).envelopes)
    }

    /// The projections, the clock having passed `until`.
    pub fn projections(&self, until: &str) -> Projections {
        rerun(&self.commands, t(until), &WhatIf::default()).projections
    }
}

/// A state machine under test, step by step: given a state, when a command (or the clock
/// passing an instant), then its events or a rejection naming its rule.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub state: State,
}

impl World {
    pub fn new() -> World {
        World::default()
    }

    /// When `command` at `at` (after the clock has passed `at`), then accepted: its events
    /// (without the `command_received` record), applied.
    pub fn ok(&mut self, at: Instant, command: impl Into<Command>) -> Vec<Event> {
        let command = command.into();
        self.advance(at);
        let handled = handle(&self.state, &command, at, None);
        if let Some(r) = &handled.rejection {
            panic!("{command:?} refused: {r}");
        }
        for e in &handled.events {
            self.state.apply(e, handled.at);
        }
        handled.events.into_iter().filter(|e| !matches!(e, Event::CommandReceived { .. })).collect()
    }

    /// When `command` at `at`, then refused under `rule`; the records of the refusal change
    /// nothing but the clock.
    pub fn refused(&mut self, at: Instant, command: impl Into<Command>, rule: Rule) -> Rejection {
        let command = command.into();
        self.advance(at);
        let handled = handle(&self.state, &command, at, None);
        let rejection = handled.rejection.clone().unwrap_or_else(|| panic!("{command:?} should be refused under {rule}"));
        assert_eq!(rejection.rule, rule, "{command:?}: {rejection}");
        let mut after = self.state.clone();
        for e in &handled.events {
            after.apply(e, handled.at);
        }
        let mut before = self.state.clone();
        before.clock = after.clock;
        assert_eq!(after, before, "{command:?}: a refusal changed the state");
        self.state = after;
        rejection
    }

    /// The clock passes `to`: every time-driven event due by then, in instant order.
    pub fn advance(&mut self, to: Instant) -> Vec<(Instant, Event)> {
        let mut out = Vec::new();
        while let Some((at, events)) = tick(&self.state, to) {
            assert!(!events.is_empty(), "a due instant must produce events");
            for e in events {
                self.state.apply(&e, at);
                out.push((at, e));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_history_bills_what_the_rules_say() {
        // Seed §6: ready 16:47:08 at 3.50/h; the first cycle ends 17:00:00: 772 s → 0.75 (R2, R4).
        let given = Given::new()
            .at("2023-01-01T00:00:00+08:00", cmd::seed_price())
            .at("2023-01-01T00:00:00+08:00", cmd::open_account("a", "100.00"))
            .at("2023-04-18T16:47:08+08:00", cmd::purchase("a", "p"));
        let bills = given.projections("2023-04-18T17:00:00+08:00").document().bills;
        assert_eq!(bills.len(), 1, "{bills:?}");
        assert_eq!((bills[0].list_price.as_str(), bills[0].payable.as_str()), ("0.75055555", "0.75"));
        assert_eq!(given.log("2023-04-18T17:00:00+08:00").len() as u64, given.projections("2023-04-18T17:00:00+08:00").events);
    }

    #[test]
    fn a_world_refuses_without_changing_anything_but_the_clock() {
        let mut w = World::new();
        let at = t("2023-01-01T00:00:00+08:00");
        w.ok(at, cmd::seed_price());
        w.ok(at, cmd::open_account("a", "100.00"));
        // R12: 1750 is more than the balance.
        let r = w.refused(t("2023-01-02T00:00:00+08:00"), cmd::purchase("a", "p").monthly(1), Rule::R12);
        assert!(!r.reason.is_empty());
        assert_eq!(w.state.clock, Some(t("2023-01-02T00:00:00+08:00")));
        assert!(w.state.pools.is_empty());
    }
}
